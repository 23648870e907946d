//! Paths inside collections: `GET|HEAD /o/{root}/{path}`. A file is served like any object
//! (its address as ETag, ranges, the sandboxing policy), as its entry's media type or the one
//! its name suggests; a folder answers its `index.html` when it has one, else a listing (JSON
//! when the client accepts `application/json`, HTML otherwise). A folder asked for without
//! its trailing `/` is redirected to it, so relative links in its pages resolve inside it.

use std::fmt::Write as _;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use ron_auth::token::Op;
use ron_proto::collection::{Collection, CollectionPath, Kind};
use ron_proto::{Address, ErrorKind, Problem};
use serde_json::json;
use svc_overlay::{OverlayError, Resolved};

use crate::ApiError;
use crate::admin::Shared;
use crate::auth::authorize;
use crate::objects::serve;

/// What a name keeps unencoded in a listing's links: RFC 3986's unreserved characters.
const NAME: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The policy of a generated listing: no scripts, no fetches, inline style only, sandboxed.
const LISTING_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; sandbox";

/// The folder page a browser gets when a folder has no `index.html`.
const INDEX: &str = "index.html";

/// `GET|HEAD /o/{root}/` and `/o/{root}/{*path}`.
pub(crate) async fn walk(
    State(state): State<Shared>,
    request: Request,
) -> Result<Response, ApiError> {
    let raw = request.uri().path();
    // The router matched `/o/{root}/…`: the root is the segment after `/o/`.
    let (root, rest) = raw
        .strip_prefix("/o/")
        .and_then(|r| r.split_once('/'))
        .ok_or_else(|| ApiError::from(Problem::new(ErrorKind::BadInput, "malformed path")))?;
    let root: Address = root.parse().map_err(|e| {
        ApiError::from(Problem::new(
            ErrorKind::BadInput,
            format!("malformed address: {e}"),
        ))
    })?;
    if state.auth.requires_token(Op::Get) {
        authorize(&state, request.headers(), Op::Get, raw)?;
    }
    inside(
        &state,
        request.method(),
        request.headers(),
        request.uri(),
        root,
        rest,
    )
    .await
}

/// Serves `rest` (the URL path after the collection's address and its `/`, as sent) inside
/// the collection `root`: a file, a folder's index page or listing, or a redirect to a
/// folder's slash.
pub(crate) async fn inside(
    state: &Shared,
    method: &Method,
    headers: &HeaderMap,
    uri: &Uri,
    root: Address,
    rest: &str,
) -> Result<Response, ApiError> {
    let path = CollectionPath::parse(rest).map_err(OverlayError::BadPath)?;
    match state.overlay.resolve(root, &path).await? {
        Resolved::File(entry) if !path.trailing_slash => {
            serve(
                state,
                method,
                headers,
                entry.address,
                entry.served_media_type(),
            )
            .await
        }
        Resolved::File(_) => Err(OverlayError::NoSuchPath {
            root,
            path: format!("{}/", path.segments.join("/")),
        }
        .into()),
        Resolved::Folder { .. } if !path.trailing_slash => {
            let mut to = format!("{}/", uri.path());
            if let Some(query) = uri.query() {
                let _ = write!(to, "?{query}");
            }
            let mut response = StatusCode::MOVED_PERMANENTLY.into_response();
            if let Ok(v) = HeaderValue::from_str(&to) {
                response.headers_mut().insert(header::LOCATION, v);
            }
            Ok(response)
        }
        Resolved::Folder {
            address,
            collection,
        } => {
            if let Some(index) = collection.entry(INDEX).filter(|e| e.kind == Kind::File) {
                return serve(
                    state,
                    method,
                    headers,
                    index.address,
                    index.served_media_type(),
                )
                .await;
            }
            Ok(listing(method, headers, root, &path, address, &collection))
        }
    }
}

/// A folder's entries: JSON for a client that accepts it, else an HTML page of links.
fn listing(
    method: &Method,
    headers: &HeaderMap,
    root: Address,
    path: &CollectionPath,
    address: Address,
    collection: &Collection,
) -> Response {
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/json"));
    let shown = format!("/{}", path.segments.join("/"));
    let shown = if path.segments.is_empty() {
        shown
    } else {
        format!("{shown}/")
    };
    let (media_type, body) = if wants_json {
        let entries: Vec<_> = collection
            .entries
            .iter()
            .map(|e| {
                json!({
                    "name": e.name,
                    "kind": e.kind,
                    "address": e.address,
                    "size": e.size,
                    "media_type": match e.kind {
                        Kind::File => e.served_media_type(),
                        Kind::Folder => None,
                    },
                })
            })
            .collect();
        let value = json!({
            "root": root,
            "path": shown,
            "address": address,
            "size": collection.total_size(),
            "entries": entries,
        });
        ("application/json", value.to_string())
    } else {
        ("text/html; charset=utf-8", html(root, &shown, collection))
    };
    let mut response = Response::new(if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from(body.clone())
    });
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(media_type));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    headers.insert(header::VARY, HeaderValue::from_static("accept"));
    // The folder's content never changes (its address names it); the page's look may, with
    // the node's version.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(LISTING_POLICY),
    );
    response
}

/// Text for HTML: the five characters that could open markup or end an attribute, escaped.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The HTML listing: a table of links (names percent-encoded in links, escaped in text).
fn html(root: Address, shown: &str, collection: &Collection) -> String {
    let title = escape(&format!("{root}{shown}"));
    let mut page = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>{title}</title><style>\
         body{{font:14px system-ui,sans-serif;margin:2em;color:#222}}\
         table{{border-collapse:collapse}}td{{padding:2px 12px}}\
         td.n{{text-align:right;font-variant-numeric:tabular-nums}}\
         code{{color:#666}}</style></head><body>\n<h1>{}</h1>\n<p><code>{root}</code></p>\n\
         <table>\n",
        escape(shown)
    );
    if shown != "/" {
        page.push_str("<tr><td><a href=\"../\">../</a></td><td></td><td></td></tr>\n");
    }
    for e in &collection.entries {
        let slash = if e.kind == Kind::Folder { "/" } else { "" };
        let _ = writeln!(
            page,
            "<tr><td><a href=\"./{href}{slash}\">{name}{slash}</a></td>\
             <td class=\"n\">{size}</td><td>{kind}</td></tr>",
            href = utf8_percent_encode(&e.name, NAME),
            name = escape(&e.name),
            size = e.size,
            kind = match e.kind {
                Kind::File => escape(
                    &e.served_media_type()
                        .unwrap_or_else(|| "application/octet-stream".into())
                ),
                Kind::Folder => "folder".into(),
            },
        );
    }
    page.push_str("</table>\n</body></html>\n");
    page
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;
    use ron_proto::collection::{COLLECTION_MEDIA_TYPE, Entry};
    use svc_overlay::{OverlayHandle, PutRequest};
    use tower::ServiceExt;

    async fn put(overlay: &OverlayHandle, bytes: &[u8], media_type: Option<&str>) -> Address {
        let request = PutRequest {
            media_type: media_type.map(str::to_owned),
            expect: None,
            durability: None,
        };
        overlay.put_bytes(bytes, request).await.unwrap().address
    }

    async fn folder(overlay: &OverlayHandle, entries: Vec<Entry>) -> Address {
        let mut c = Collection::new(entries);
        c.sort();
        put(overlay, &c.encode().unwrap(), Some(COLLECTION_MEDIA_TYPE)).await
    }

    struct Answer {
        status: StatusCode,
        headers: HeaderMap,
        body: String,
    }

    async fn fetch(
        app: &axum::Router,
        method: Method,
        uri: &str,
        extra: &[(&str, &str)],
    ) -> Answer {
        let mut req = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .header("host", "node.test");
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let res = app
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let (status, headers) = (res.status(), res.headers().clone());
        let body = to_bytes(res.into_body(), 1 << 20).await.unwrap();
        Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    #[tokio::test]
    async fn paths_serve_files_index_pages_listings_and_refuse_traversal() {
        let st = crate::admin::tests::state();
        let overlay = st.overlay.clone();
        let app = crate::router(st);
        let text = put(&overlay, b"hello, tree", None).await;
        let page = put(&overlay, b"<h1>site</h1>", None).await;
        let site = folder(&overlay, vec![Entry::file("index.html", page, 13, None)]).await;
        let docs = folder(&overlay, vec![Entry::file("x.md", text, 11, None)]).await;
        let root = folder(
            &overlay,
            vec![
                Entry::file("a b.txt", text, 11, None),
                Entry::file("raw", text, 11, Some("text/x-custom".into())),
                Entry::folder("site", site, 13),
                Entry::folder("docs", docs, 11),
            ],
        )
        .await;
        let at = |p: &str| format!("/o/{root}/{p}");

        // A file: its bytes, its own address as ETag, its type from the name, sandboxed.
        let a = fetch(&app, Method::GET, &at("a%20b.txt"), &[]).await;
        assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "hello, tree"));
        assert_eq!(a.headers[header::CONTENT_TYPE], "text/plain");
        assert_eq!(a.headers[header::ETAG], format!("\"{text}\"").as_str());
        assert!(
            a.headers[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .starts_with("sandbox")
        );
        let a = fetch(&app, Method::GET, &at("raw"), &[("range", "bytes=0-4")]).await;
        assert_eq!(
            (a.status, a.body.as_str()),
            (StatusCode::PARTIAL_CONTENT, "hello")
        );
        assert_eq!(a.headers[header::CONTENT_TYPE], "text/x-custom");
        let a = fetch(&app, Method::HEAD, &at("docs/x.md"), &[]).await;
        assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, ""));
        assert_eq!(a.headers[header::CONTENT_LENGTH], "11");

        // A folder: redirected to its slash, then its index page.
        let a = fetch(&app, Method::GET, &at("site?x=1"), &[]).await;
        assert_eq!(a.status, StatusCode::MOVED_PERMANENTLY);
        assert_eq!(a.headers[header::LOCATION], at("site/?x=1").as_str());
        let a = fetch(&app, Method::GET, &at("site/"), &[]).await;
        assert_eq!(
            (a.status, a.body.as_str()),
            (StatusCode::OK, "<h1>site</h1>")
        );
        assert_eq!(a.headers[header::CONTENT_TYPE], "text/html");

        // Without one: a listing, JSON or HTML.
        let a = fetch(
            &app,
            Method::GET,
            &at(""),
            &[("accept", "application/json")],
        )
        .await;
        assert_eq!(a.status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        let names: Vec<_> = v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["a b.txt", "docs", "raw", "site"]);
        assert_eq!(v["entries"][1]["kind"], "folder");
        assert_eq!(v["entries"][0]["media_type"], "text/plain");
        assert_eq!(v["address"], root.to_string());
        assert_eq!(v["size"], 46);
        let a = fetch(&app, Method::GET, &at("docs/"), &[("accept", "text/html")]).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(a.headers[header::CONTENT_SECURITY_POLICY], LISTING_POLICY);
        assert!(a.body.contains("href=\"./x.md\""), "{}", a.body);
        let a = fetch(&app, Method::HEAD, &at("docs/"), &[]).await;
        assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, ""));

        // Traversal and other malformed paths: refused before anything is read.
        for bad in [
            "../x",
            "%2e%2e/x",
            "docs/%2E%2E/raw",
            "a%2Fb",
            "docs//x.md",
            "./raw",
            "%ff",
        ] {
            let a = fetch(&app, Method::GET, &at(bad), &[]).await;
            assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad}: {}", a.body);
            assert!(a.body.contains("invalid_path"), "{bad}: {}", a.body);
        }
        for missing in ["nope", "docs/nope", "raw/x", "raw/"] {
            let a = fetch(&app, Method::GET, &at(missing), &[]).await;
            assert_eq!(a.status, StatusCode::NOT_FOUND, "{missing}: {}", a.body);
        }
        // A file is not a collection; a malformed root is a 400 too.
        let a = fetch(&app, Method::GET, &format!("/o/{text}/x"), &[]).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        assert!(a.body.contains("not_a_collection"), "{}", a.body);
        let a = fetch(&app, Method::GET, "/o/b3:12/x", &[]).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn names_are_escaped_in_text_and_encoded_in_links() {
        let mut c = Collection::new(vec![
            Entry::file("<b>&\"x'.html", Address::of(b"1"), 3, None),
            Entry::folder("a b?#", Address::of(b"2"), 9),
        ]);
        c.sort();
        let page = html(Address::of(b"root"), "/sub/", &c);
        assert!(page.contains("&lt;b&gt;&amp;&quot;x&#39;.html"), "{page}");
        assert!(page.contains("href=\"./%3Cb%3E%26%22x%27.html\""), "{page}");
        assert!(page.contains("href=\"./a%20b%3F%23/\""), "{page}");
        assert!(page.contains("href=\"../\""));
        assert!(!page.contains("<b>"));
        assert!(!html(Address::of(b"root"), "/", &c).contains("href=\"../\""));
    }
}
