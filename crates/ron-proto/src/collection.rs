//! Collections: a directory tree as objects. A collection is a DAG-CBOR record of sorted
//! entries (name, address, size, media type, file or folder); a folder's entry names another
//! collection. The address of the top collection (its "manifest root") names the whole tree:
//! change one byte anywhere and the root changes.
//!
//! Everything is checked on write and after every read: names are never empty, `.`, `..`, and
//! never hold `/` or NUL (so no entry can step outside its folder when written to disk or
//! served); entries are sorted by name and unique (one tree, one encoding, one address); a
//! collection is at most [`MAX_ENTRIES`] entries and [`MAX_COLLECTION_BYTES`] bytes; walks stop
//! at [`MAX_DEPTH`] folders. Unknown fields are ignored on read, as for [`crate::Manifest`].
//!
//! ```
//! use ron_proto::collection::{Collection, Entry};
//! use ron_proto::Address;
//!
//! let mut c = Collection::new(vec![
//!     Entry::file("index.html", Address::of(b"<h1>hi</h1>"), 11, Some("text/html".into())),
//!     Entry::folder("img", Address::of(b"a collection"), 0),
//! ]);
//! c.sort();
//! let bytes = c.encode().unwrap();
//! assert_eq!(Collection::decode(&bytes).unwrap(), c);
//! assert!(c.entry("index.html").is_some());
//! ```

use percent_encoding::percent_decode_str;
use serde::{Deserialize, Serialize};

use crate::Address;
use crate::manifest::valid_media_type;

/// The collection format version this crate writes.
pub const COLLECTION_VERSION: u32 = 1;
/// The media type a collection is uploaded with; the node validates every upload of this
/// type as a collection before it commits it.
pub const COLLECTION_MEDIA_TYPE: &str = "application/vnd.ron.collection+cbor";
/// Most entries in one collection (one folder).
pub const MAX_ENTRIES: usize = 65_536;
/// Largest encoded collection: a reader holds one whole in memory.
pub const MAX_COLLECTION_BYTES: u64 = 16 << 20;
/// Deepest nesting of folders a walk follows.
pub const MAX_DEPTH: usize = 64;
/// Longest name, in bytes (what Linux file systems take).
pub const MAX_NAME_BYTES: usize = 255;

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A file: its address is the object's.
    File,
    /// A folder: its address is another collection's.
    Folder,
}

/// One name in a folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The name: a single path segment (see the module's rules).
    pub name: String,
    /// File or folder.
    pub kind: Kind,
    /// The object's address (a file) or the collection's (a folder).
    pub address: Address,
    /// Bytes: the file's size, or for a folder the total of the files under it.
    pub size: u64,
    /// A file's media type, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
}

impl Entry {
    /// A file entry.
    pub fn file(
        name: impl Into<String>,
        address: Address,
        size: u64,
        media_type: Option<String>,
    ) -> Self {
        Self {
            name: name.into(),
            kind: Kind::File,
            address,
            size,
            media_type,
        }
    }

    /// A folder entry: `address` names its collection, `size` the bytes of the files under it.
    pub fn folder(name: impl Into<String>, address: Address, size: u64) -> Self {
        Self {
            name: name.into(),
            kind: Kind::Folder,
            address,
            size,
            media_type: None,
        }
    }

    /// The media type to serve the file with: the one stored, else one guessed from the name.
    pub fn served_media_type(&self) -> Option<String> {
        self.media_type
            .clone()
            .or_else(|| guess_media_type(&self.name))
    }
}

/// One folder of a tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collection {
    /// Format version ([`COLLECTION_VERSION`]); its key also marks the record as a
    /// collection, so an object of another kind does not decode as one.
    pub ron_collection: u32,
    /// The entries, sorted by name (bytewise), names unique.
    pub entries: Vec<Entry>,
}

/// A collection that cannot be written or read, or a path that cannot be walked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CollectionError {
    /// Not DAG-CBOR, or not a collection.
    #[error("not a collection: {0}")]
    Decode(String),
    /// A version this crate does not understand.
    #[error("collection version {0} is not supported")]
    Version(u32),
    /// Larger than [`MAX_COLLECTION_BYTES`] or [`MAX_ENTRIES`].
    #[error("collection too large: {0}")]
    TooLarge(String),
    /// A name breaks the rules.
    #[error("invalid name {name:?}: {reason}")]
    Name {
        /// The name (lossy, for the message).
        name: String,
        /// Which rule.
        reason: &'static str,
    },
    /// Entries out of order or repeated.
    #[error("entries are not sorted and unique at {0:?}")]
    Order(String),
    /// A media type that is not `type/subtype`, or one on a folder.
    #[error("invalid media type on {0:?}")]
    MediaType(String),
    /// Folders nested past [`MAX_DEPTH`].
    #[error("folders nested deeper than {MAX_DEPTH}")]
    TooDeep,
}

/// Checks one name against the rules: the reason it breaks, if it does.
pub fn check_name(name: &str) -> Result<(), CollectionError> {
    let reason = if name.is_empty() {
        "empty"
    } else if name == "." || name == ".." {
        "a relative path step"
    } else if name.contains('/') {
        "contains '/'"
    } else if name.contains('\0') {
        "contains NUL"
    } else if name.len() > MAX_NAME_BYTES {
        "longer than 255 bytes"
    } else {
        return Ok(());
    };
    Err(CollectionError::Name {
        name: name.chars().take(64).collect(),
        reason,
    })
}

impl Collection {
    /// A collection of `entries` (call [`Collection::sort`] before encoding if they may be
    /// out of order).
    pub fn new(entries: Vec<Entry>) -> Self {
        Self {
            ron_collection: COLLECTION_VERSION,
            entries,
        }
    }

    /// Sorts the entries by name, bytewise: the one order a tree is encoded in.
    pub fn sort(&mut self) {
        self.entries
            .sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    }

    /// Checks every rule (version, size, names, order, media types).
    pub fn validate(&self) -> Result<(), CollectionError> {
        if self.ron_collection != COLLECTION_VERSION {
            return Err(CollectionError::Version(self.ron_collection));
        }
        if self.entries.len() > MAX_ENTRIES {
            return Err(CollectionError::TooLarge(format!(
                "{} entries, at most {MAX_ENTRIES}",
                self.entries.len()
            )));
        }
        for (i, entry) in self.entries.iter().enumerate() {
            check_name(&entry.name)?;
            if i > 0 && self.entries[i - 1].name.as_bytes() >= entry.name.as_bytes() {
                return Err(CollectionError::Order(
                    entry.name.chars().take(64).collect(),
                ));
            }
            match (&entry.media_type, entry.kind) {
                (None, _) => {}
                (Some(mt), Kind::File) if valid_media_type(mt) => {}
                (Some(_), _) => {
                    return Err(CollectionError::MediaType(
                        entry.name.chars().take(64).collect(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The collection as DAG-CBOR, after validation.
    pub fn encode(&self) -> Result<Vec<u8>, CollectionError> {
        self.validate()?;
        let bytes =
            serde_ipld_dagcbor::to_vec(self).map_err(|e| CollectionError::Decode(e.to_string()))?;
        if bytes.len() as u64 > MAX_COLLECTION_BYTES {
            return Err(CollectionError::TooLarge(format!(
                "{} bytes, at most {MAX_COLLECTION_BYTES}",
                bytes.len()
            )));
        }
        Ok(bytes)
    }

    /// Reads and validates a DAG-CBOR collection. Unknown fields are ignored.
    pub fn decode(bytes: &[u8]) -> Result<Self, CollectionError> {
        if bytes.len() as u64 > MAX_COLLECTION_BYTES {
            return Err(CollectionError::TooLarge(format!(
                "{} bytes, at most {MAX_COLLECTION_BYTES}",
                bytes.len()
            )));
        }
        let collection: Collection = serde_ipld_dagcbor::from_slice(bytes)
            .map_err(|e| CollectionError::Decode(e.to_string()))?;
        collection.validate()?;
        Ok(collection)
    }

    /// The entry called `name` (the entries are sorted: a binary search).
    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| e.name.as_bytes().cmp(name.as_bytes()))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// Bytes of all the files under this folder, by the entries' sizes.
    pub fn total_size(&self) -> u64 {
        self.entries
            .iter()
            .fold(0u64, |sum, e| sum.saturating_add(e.size))
    }
}

/// A path inside a collection, as a URL carries it: its decoded segments, and whether it ends
/// with `/` (a folder asked for as a folder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionPath {
    /// The names to walk, each checked by [`check_name`].
    pub segments: Vec<String>,
    /// The path ended with `/` (or was empty).
    pub trailing_slash: bool,
}

impl CollectionPath {
    /// Parses the part of a URL path after the collection's address (`a/b%20c/`):
    /// percent-decoded segment by segment, so an encoded `/` (`%2F`) stays inside its segment
    /// and is refused there. Empty segments (`a//b`), `.` and `..` (encoded or not), NUL and
    /// non-UTF-8 names are refused: nothing walks out of the collection, and one file has
    /// one path.
    pub fn parse(raw: &str) -> Result<Self, CollectionError> {
        let trailing_slash = raw.is_empty() || raw.ends_with('/');
        let body = raw.strip_suffix('/').unwrap_or(raw);
        let mut segments = Vec::new();
        if !body.is_empty() {
            for piece in body.split('/') {
                let name =
                    percent_decode_str(piece)
                        .decode_utf8()
                        .map_err(|_| CollectionError::Name {
                            name: piece.chars().take(64).collect(),
                            reason: "not UTF-8 once decoded",
                        })?;
                check_name(&name)?;
                if segments.len() == MAX_DEPTH {
                    return Err(CollectionError::TooDeep);
                }
                segments.push(name.into_owned());
            }
        }
        Ok(Self {
            segments,
            trailing_slash,
        })
    }
}

/// The media type a file's name suggests (`index.html` → `text/html`), from the
/// `mime_guess` table; `None` for names it does not know.
pub fn guess_media_type(name: &str) -> Option<String> {
    mime_guess::from_path(name)
        .first_raw()
        .filter(|mt| valid_media_type(mt))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Collection {
        let mut c = Collection::new(vec![
            Entry::file("b.txt", Address::of(b"b"), 1, Some("text/plain".into())),
            Entry::file("résumé 日本.md", Address::of(b"r"), 1, None),
            Entry::folder("a", Address::of(b"sub"), 10),
            Entry::file("empty", Address::of(b""), 0, None),
        ]);
        c.sort();
        c
    }

    #[test]
    fn round_trip_sorted_and_found() {
        let c = sample();
        let names: Vec<_> = c.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["a", "b.txt", "empty", "résumé 日本.md"]);
        let bytes = c.encode().unwrap();
        assert_eq!(Collection::decode(&bytes).unwrap(), c);
        assert_eq!(c.entry("b.txt").unwrap().size, 1);
        assert!(c.entry("c").is_none());
        assert_eq!(c.total_size(), 12);
    }

    #[test]
    fn unknown_fields_are_ignored_on_read() {
        #[derive(Serialize)]
        struct NewerEntry<'a> {
            name: &'a str,
            kind: &'a str,
            address: Address,
            size: u64,
            mode: u32,
        }
        #[derive(Serialize)]
        struct Newer<'a> {
            ron_collection: u32,
            entries: Vec<NewerEntry<'a>>,
            signed_by: &'a str,
        }
        let newer = Newer {
            ron_collection: 1,
            entries: vec![NewerEntry {
                name: "x",
                kind: "file",
                address: Address::of(b"x"),
                size: 1,
                mode: 0o644,
            }],
            signed_by: "someone",
        };
        let read = Collection::decode(&serde_ipld_dagcbor::to_vec(&newer).unwrap()).unwrap();
        assert_eq!(read.entries[0].name, "x");
        assert_eq!(read.entries[0].kind, Kind::File);
    }

    #[test]
    fn every_rule_is_enforced_on_write_and_read() {
        let bad_names = ["", ".", "..", "a/b", "a\0b", &"x".repeat(256)];
        for name in bad_names {
            let c = Collection::new(vec![Entry::file(name, Address::of(b""), 0, None)]);
            assert!(
                matches!(c.encode(), Err(CollectionError::Name { .. })),
                "{name:?}"
            );
            // Written by someone who skipped the checks: refused on read too.
            let raw = serde_ipld_dagcbor::to_vec(&c).unwrap();
            assert!(Collection::decode(&raw).is_err(), "{name:?}");
        }
        assert!(check_name(&"é".repeat(127)).is_ok(), "254 bytes");

        let dup = Collection::new(vec![
            Entry::file("a", Address::of(b"1"), 1, None),
            Entry::file("a", Address::of(b"2"), 1, None),
        ]);
        assert!(matches!(dup.encode(), Err(CollectionError::Order(_))));
        let unsorted = Collection::new(vec![
            Entry::file("b", Address::of(b"1"), 1, None),
            Entry::file("a", Address::of(b"2"), 1, None),
        ]);
        assert!(matches!(unsorted.encode(), Err(CollectionError::Order(_))));
        let raw = serde_ipld_dagcbor::to_vec(&unsorted).unwrap();
        assert!(matches!(
            Collection::decode(&raw),
            Err(CollectionError::Order(_))
        ));

        let mut typed_folder = sample();
        typed_folder.entries[0].media_type = Some("text/plain".into());
        assert!(matches!(
            typed_folder.encode(),
            Err(CollectionError::MediaType(_))
        ));
        let mut bad_type = sample();
        bad_type.entries[1].media_type = Some("text/html\r\nx: y".into());
        assert!(matches!(
            bad_type.encode(),
            Err(CollectionError::MediaType(_))
        ));

        let mut newer = sample();
        newer.ron_collection = 2;
        assert_eq!(newer.encode(), Err(CollectionError::Version(2)));

        // Other objects are not collections: a manifest, JSON, garbage.
        assert!(Collection::decode(b"{\"entries\":[]}").is_err());
        assert!(Collection::decode(b"\xff\x00garbage").is_err());
        let manifest = crate::Manifest {
            version: 1,
            address: Address::of(b""),
            size: 0,
            chunks: vec![],
            media_type: None,
        };
        assert!(Collection::decode(&manifest.encode().unwrap()).is_err());
    }

    #[test]
    #[cfg_attr(miri, ignore = "65,537 entries take minutes under Miri")]
    fn a_collection_holds_at_most_max_entries() {
        let mut entries: Vec<_> = (0..MAX_ENTRIES)
            .map(|i| Entry::file(format!("{i:08}"), Address::of(b""), 0, None))
            .collect();
        let full = Collection::new(entries.clone());
        let bytes = full.encode().unwrap();
        assert_eq!(
            Collection::decode(&bytes).unwrap().entries.len(),
            MAX_ENTRIES
        );
        entries.push(Entry::file("99999999", Address::of(b""), 0, None));
        let many = Collection::new(entries);
        assert!(matches!(many.encode(), Err(CollectionError::TooLarge(_))));
        let raw = serde_ipld_dagcbor::to_vec(&many).unwrap();
        assert!(matches!(
            Collection::decode(&raw),
            Err(CollectionError::TooLarge(_))
        ));
    }

    #[test]
    fn paths_decode_per_segment_and_refuse_traversal() {
        let p = CollectionPath::parse("a/b%20c/d%C3%A9").unwrap();
        assert_eq!(p.segments, ["a", "b c", "dé"]);
        assert!(!p.trailing_slash);
        let p = CollectionPath::parse("a/").unwrap();
        assert_eq!(p.segments, ["a"]);
        assert!(p.trailing_slash);
        let root = CollectionPath::parse("").unwrap();
        assert!(root.segments.is_empty() && root.trailing_slash);
        for bad in [
            "..", "a/../b", "%2e%2e/x", "%2E%2E", "./a", "a/%2e", "a%2Fb", "a%2fb/c", "a//b", "/a",
            "a%00b", "%ff",
        ] {
            assert!(CollectionPath::parse(bad).is_err(), "{bad:?}");
        }
        let deep = "a/".repeat(MAX_DEPTH + 1);
        assert_eq!(CollectionPath::parse(&deep), Err(CollectionError::TooDeep));
    }

    #[test]
    fn media_types_are_guessed_from_names() {
        assert_eq!(guess_media_type("index.html").as_deref(), Some("text/html"));
        assert_eq!(guess_media_type("a.PNG").as_deref(), Some("image/png"));
        assert_eq!(guess_media_type("README"), None);
        let e = Entry::file("x.css", Address::of(b""), 0, None);
        assert_eq!(e.served_media_type().as_deref(), Some("text/css"));
        let e = Entry::file("x.css", Address::of(b""), 0, Some("text/plain".into()));
        assert_eq!(e.served_media_type().as_deref(), Some("text/plain"));
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(
            names in proptest::collection::btree_set("[^/\u{0}]{1,40}", 0..40),
            sizes in proptest::collection::vec(0u64..1 << 40, 40),
        ) {
            let entries = names
                .iter()
                .filter(|n| check_name(n).is_ok())
                .zip(&sizes)
                .enumerate()
                .map(|(i, (n, s))| if i % 3 == 0 {
                    Entry::folder(n.clone(), Address::of(n.as_bytes()), *s)
                } else {
                    Entry::file(n.clone(), Address::of(n.as_bytes()), *s, guess_media_type(n))
                })
                .collect();
            let mut c = Collection::new(entries);
            c.sort();
            let bytes = c.encode().unwrap();
            prop_assert_eq!(&Collection::decode(&bytes).unwrap(), &c);
            // One tree, one encoding: shuffled input sorts back to the same bytes.
            let mut shuffled = c.clone();
            shuffled.entries.reverse();
            shuffled.sort();
            prop_assert_eq!(shuffled.encode().unwrap(), bytes);
        }

        #[test]
        fn arbitrary_bytes_and_paths_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            path in "\\PC{0,80}",
        ) {
            let _ = Collection::decode(&bytes);
            if let Ok(p) = CollectionPath::parse(&path) {
                for s in &p.segments {
                    prop_assert!(check_name(s).is_ok());
                }
            }
        }
    }
}
