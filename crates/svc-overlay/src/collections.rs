//! Walking collections: a path inside a tree, folder by folder, each collection read verified
//! (from this node or fetched from peers) and checked before it is trusted.

use ron_proto::Address;
use ron_proto::collection::{
    Collection, CollectionError, CollectionPath, Entry, Kind, MAX_COLLECTION_BYTES,
};

use crate::{OverlayError, OverlayHandle};

/// What a path inside a collection names.
#[derive(Debug, Clone)]
pub enum Resolved {
    /// A folder: its collection's address and entries.
    Folder {
        /// The folder's collection.
        address: Address,
        /// Its entries.
        collection: Collection,
    },
    /// A file: its entry (address, size, media type).
    File(Entry),
}

impl OverlayHandle {
    /// The collection at `address`, read whole and verified (fetched from peers and stored,
    /// unpinned, when this node lacks it). An object that is too large or does not decode as
    /// a valid collection is [`OverlayError::NotACollection`].
    pub async fn collection(&self, address: Address) -> Result<Collection, OverlayError> {
        let object = self.get_stored(address).await?;
        let size = object.size();
        if size > MAX_COLLECTION_BYTES {
            return Err(OverlayError::NotACollection(
                address,
                CollectionError::TooLarge(format!("{size} bytes, at most {MAX_COLLECTION_BYTES}")),
            ));
        }
        let bytes = object.read_verified(0, size).await?;
        Collection::decode(&bytes).map_err(|e| OverlayError::NotACollection(address, e))
    }

    /// Walks `path` from the collection `root`: every folder on the way is read and checked;
    /// a name that is not there, or a file walked into as a folder, is
    /// [`OverlayError::NoSuchPath`].
    pub async fn resolve(
        &self,
        root: Address,
        path: &CollectionPath,
    ) -> Result<Resolved, OverlayError> {
        let mut address = root;
        let mut collection = self.collection(root).await?;
        for (depth, name) in path.segments.iter().enumerate() {
            let missing = || OverlayError::NoSuchPath {
                root,
                path: path.segments[..=depth].join("/"),
            };
            let entry = collection.entry(name).ok_or_else(missing)?.clone();
            match entry.kind {
                Kind::Folder => {
                    address = entry.address;
                    collection = self.collection(address).await?;
                }
                Kind::File if depth + 1 == path.segments.len() => {
                    return Ok(Resolved::File(entry));
                }
                Kind::File => return Err(missing()),
            }
        }
        Ok(Resolved::Folder {
            address,
            collection,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PutRequest;
    use ron_proto::collection::COLLECTION_MEDIA_TYPE;

    async fn put(overlay: &OverlayHandle, bytes: &[u8], media_type: Option<&str>) -> Address {
        let request = PutRequest {
            media_type: media_type.map(str::to_owned),
            expect: None,
            durability: None,
        };
        overlay.put_bytes(bytes, request).await.unwrap().address
    }

    async fn put_collection(overlay: &OverlayHandle, entries: Vec<Entry>) -> Address {
        let mut c = Collection::new(entries);
        c.sort();
        put(overlay, &c.encode().unwrap(), Some(COLLECTION_MEDIA_TYPE)).await
    }

    #[tokio::test]
    async fn paths_resolve_through_folders_and_nothing_else() {
        let (overlay, actor) = crate::in_memory(4).unwrap();
        tokio::spawn(actor);
        let page = put(&overlay, b"<h1>hi</h1>", None).await;
        let inner = put_collection(&overlay, vec![Entry::file("index.html", page, 11, None)]).await;
        let root = put_collection(
            &overlay,
            vec![
                Entry::folder("site", inner, 11),
                Entry::file("page.html", page, 11, None),
            ],
        )
        .await;
        let walk = |p: &str| {
            let overlay = overlay.clone();
            let path = CollectionPath::parse(p).unwrap();
            async move { overlay.resolve(root, &path).await }
        };
        match walk("site/index.html").await.unwrap() {
            Resolved::File(e) => assert_eq!((e.address, e.size), (page, 11)),
            other => panic!("{other:?}"),
        }
        match walk("site/").await.unwrap() {
            Resolved::Folder {
                address,
                collection,
            } => {
                assert_eq!(address, inner);
                assert_eq!(collection.entries.len(), 1);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(walk("").await.unwrap(), Resolved::Folder { address, .. } if address == root)
        );
        for missing in ["nope", "site/nope", "page.html/x", "site/index.html/x"] {
            assert!(
                matches!(walk(missing).await, Err(OverlayError::NoSuchPath { .. })),
                "{missing}"
            );
        }
        // A file is not a collection.
        let err = overlay
            .resolve(page, &CollectionPath::parse("").unwrap())
            .await;
        assert!(
            matches!(err, Err(OverlayError::NotACollection(..))),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn an_upload_declared_a_collection_must_be_one() {
        let (overlay, actor) = crate::in_memory(4).unwrap();
        tokio::spawn(actor);
        let bad = Collection::new(vec![
            Entry::file("b", Address::of(b"1"), 1, None),
            Entry::file("a", Address::of(b"2"), 1, None),
        ]);
        let unsorted = serde_ipld_dagcbor::to_vec(&bad).unwrap();
        for (bytes, mt) in [
            (&b"garbage"[..], COLLECTION_MEDIA_TYPE),
            (&unsorted[..], COLLECTION_MEDIA_TYPE),
            (&unsorted[..], "Application/Vnd.Ron.Collection+CBOR; v=1"),
        ] {
            let mut upload = overlay
                .put(PutRequest {
                    media_type: Some(mt.into()),
                    expect: None,
                    durability: None,
                })
                .unwrap();
            upload.write(bytes).await.unwrap();
            assert!(matches!(
                upload.finish().await,
                Err(OverlayError::InvalidCollection(_))
            ));
            assert!(overlay.open(Address::of(bytes)).await.unwrap().is_none());
        }
        // Past the largest collection: refused as it arrives.
        let mut upload = overlay
            .put(PutRequest {
                media_type: Some(COLLECTION_MEDIA_TYPE.into()),
                expect: None,
                durability: None,
            })
            .unwrap();
        let big = vec![0u8; 1 << 20];
        let mut refused = false;
        for _ in 0..=(MAX_COLLECTION_BYTES >> 20) {
            if let Err(e) = upload.write(&big).await {
                assert!(matches!(e, OverlayError::TooLarge { .. }));
                refused = true;
                break;
            }
        }
        assert!(refused);
    }

    #[tokio::test]
    async fn the_same_bytes_with_a_media_type_retype_the_object() {
        let (overlay, actor) = crate::in_memory(4).unwrap();
        tokio::spawn(actor);
        let addr = put(&overlay, b"plain words", None).await;
        let object = overlay.open(addr).await.unwrap().unwrap();
        assert_eq!(object.media_type(), None);
        put(&overlay, b"plain words", Some("text/plain")).await;
        let object = overlay.open(addr).await.unwrap().unwrap();
        assert_eq!(object.media_type().as_deref(), Some("text/plain"));
        // Without a type, the stored one stays.
        put(&overlay, b"plain words", None).await;
        let object = overlay.open(addr).await.unwrap().unwrap();
        assert_eq!(object.media_type().as_deref(), Some("text/plain"));
    }
}
