//! A read-only reader of bolt database files (Go's bbolt format), the
//! format of containerd's `meta.db` and of its snapshotters' `metadata.db`.
//!
//! Why our own and not a crate: `bbolt-rs` reads Go files only with its
//! `compat` feature, and its read-only open takes the file lock that
//! containerd holds while it runs, so it would block (or wait on) the
//! daemon; `bolt-lite` has had one release. What containerd resolution
//! needs is small: find a bucket by name, list a bucket's keys, get a
//! value. This module does that on the whole file read into memory (never
//! locked, never mapped), and treats every byte as untrusted: every offset
//! and length is checked, a page visited twice in one walk or a tree
//! deeper than [`MAX_DEPTH`] is corruption, so a corrupt or half-written
//! file is an error, never a panic or a loop. A file read while containerd
//! writes it may be torn: the caller reads it again on an error.
//!
//! The format, as far as read here: pages of `page_size` bytes (a page may
//! overflow into the following ones); pages 0 and 1 are meta pages (magic
//! `0xED0CDAED`, version 2, FNV-1a-64 checksum), and the valid one with the
//! higher transaction id wins; its root bucket points at a branch or leaf
//! page; a leaf element flagged as a bucket holds `{root page, sequence}`,
//! with root 0 meaning an inline bucket (a leaf page inside the value).

use std::collections::HashSet;

/// Deepest page tree followed (bolt trees of any real size are a few
/// levels deep).
pub const MAX_DEPTH: usize = 64;

const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
const BRANCH_PAGE: u16 = 0x01;
const LEAF_PAGE: u16 = 0x02;
const BUCKET_LEAF: u32 = 0x01;
const BUCKET_HEADER: usize = 16;

/// Why a bolt file could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BoltError {
    /// Neither meta page is valid: not a bolt file, another version, or
    /// torn.
    #[error("no valid bolt meta page (not a bolt file, another format version, or torn)")]
    NoMeta,
    /// A page, element or value lies (partly) outside the file or page.
    #[error("page {page}: {what} out of bounds")]
    OutOfBounds {
        /// The page (0 for an inline bucket).
        page: u64,
        /// What was out of bounds.
        what: &'static str,
    },
    /// A page is not what the tree says it is, or is reached twice.
    #[error("page {page}: {what}")]
    Corrupt {
        /// The page.
        page: u64,
        /// What is wrong.
        what: &'static str,
    },
    /// The tree is deeper than [`MAX_DEPTH`].
    #[error("page tree deeper than {MAX_DEPTH}")]
    TooDeep,
}

/// A bolt file, parsed far enough to walk it.
#[derive(Debug, Clone, Copy)]
pub struct Db<'a> {
    data: &'a [u8],
    page_size: usize,
    /// Pages at or past this id were never allocated.
    high_water: u64,
    root: u64,
}

/// A bucket: the root page of its tree, or its inline leaf page.
#[derive(Debug, Clone, Copy)]
pub struct Bucket<'a> {
    db: Db<'a>,
    root: Root<'a>,
}

#[derive(Debug, Clone, Copy)]
enum Root<'a> {
    Page(u64),
    Inline(&'a [u8]),
}

/// One entry of a bucket: a value, or a nested bucket.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    /// A plain value.
    Bytes(&'a [u8]),
    /// A nested bucket.
    Bucket(Bucket<'a>),
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A valid meta page at `offset`: (page size, root page, high water, txid).
fn meta_at(data: &[u8], offset: usize) -> Option<(u32, u64, u64, u64)> {
    let m = data.get(offset.checked_add(PAGE_HEADER)?..)?.get(..64)?;
    let valid =
        u32_at(m, 0)? == MAGIC && u32_at(m, 4)? == VERSION && u64_at(m, 56)? == fnv1a64(&m[..56]);
    if !valid {
        return None;
    }
    Some((
        u32_at(m, 8)?,
        u64_at(m, 16)?,
        u64_at(m, 40)?,
        u64_at(m, 48)?,
    ))
}

impl<'a> Db<'a> {
    /// Parse the meta pages of the file `data`.
    pub fn open(data: &'a [u8]) -> Result<Self, BoltError> {
        let first = meta_at(data, 0);
        // The second meta page sits one page in; if the first is torn its
        // page size is unknown, so try the sizes bolt uses.
        let sizes = first
            .map(|m| m.0)
            .into_iter()
            .chain([4096, 8192, 16384, 65536]);
        let second = sizes
            .filter_map(|ps| meta_at(data, ps as usize).filter(|m| m.0 == ps))
            .next();
        let (page_size, root, high_water, _) = [first, second]
            .into_iter()
            .flatten()
            .filter(|m| m.0 >= 512 && m.0.is_power_of_two())
            .max_by_key(|m| m.3)
            .ok_or(BoltError::NoMeta)?;
        Ok(Db {
            data,
            page_size: page_size as usize,
            high_water,
            root,
        })
    }

    /// The root bucket (whose keys are the top-level buckets).
    pub fn root(&self) -> Bucket<'a> {
        Bucket {
            db: *self,
            root: Root::Page(self.root),
        }
    }

    /// The bytes of page `id` (with its overflow pages).
    fn page(&self, id: u64) -> Result<&'a [u8], BoltError> {
        let oob = BoltError::OutOfBounds {
            page: id,
            what: "page",
        };
        if id < 2 || id >= self.high_water {
            return Err(BoltError::Corrupt {
                page: id,
                what: "page id outside the allocated pages",
            });
        }
        let start = usize::try_from(id)
            .ok()
            .and_then(|i| i.checked_mul(self.page_size))
            .ok_or(oob.clone())?;
        let header = self
            .data
            .get(start..start.saturating_add(PAGE_HEADER))
            .ok_or(oob.clone())?;
        let overflow = u32_at(header, 12).ok_or(oob.clone())? as usize;
        let len = overflow
            .checked_add(1)
            .and_then(|n| n.checked_mul(self.page_size))
            .ok_or(oob.clone())?;
        self.data
            .get(start..start.checked_add(len).ok_or(oob.clone())?)
            .ok_or(oob)
    }
}

/// A page's elements, checked: `(key, second)`, where `second` is the child
/// page (branch) or `(flags, value)` (leaf).
enum Node<'a> {
    Branch(Vec<(&'a [u8], u64)>),
    Leaf(Vec<(&'a [u8], u32, &'a [u8])>),
}

fn node(page: &[u8], id: u64) -> Result<Node<'_>, BoltError> {
    let oob = |what| BoltError::OutOfBounds { page: id, what };
    let flags = u16_at(page, 8).ok_or(oob("page header"))?;
    let count = usize::from(u16_at(page, 10).ok_or(oob("page header"))?);
    let slice = |at: usize, pos: u32, len: u32| {
        let start = at.checked_add(pos as usize)?;
        page.get(start..start.checked_add(len as usize)?)
    };
    match flags {
        BRANCH_PAGE => (0..count)
            .map(|i| {
                let at = PAGE_HEADER + i * ELEMENT;
                let e = page.get(at..at + ELEMENT).ok_or(oob("branch element"))?;
                let (pos, ksize, child) = (u32_at(e, 0), u32_at(e, 4), u64_at(e, 8));
                let (Some(pos), Some(ksize), Some(child)) = (pos, ksize, child) else {
                    return Err(oob("branch element"));
                };
                Ok((slice(at, pos, ksize).ok_or(oob("branch key"))?, child))
            })
            .collect::<Result<_, _>>()
            .map(Node::Branch),
        LEAF_PAGE => (0..count)
            .map(|i| {
                let at = PAGE_HEADER + i * ELEMENT;
                let e = page.get(at..at + ELEMENT).ok_or(oob("leaf element"))?;
                let fields = (u32_at(e, 0), u32_at(e, 4), u32_at(e, 8), u32_at(e, 12));
                let (Some(flags), Some(pos), Some(ksize), Some(vsize)) = fields else {
                    return Err(oob("leaf element"));
                };
                let key = slice(at, pos, ksize).ok_or(oob("leaf key"))?;
                let vpos = pos.checked_add(ksize).ok_or(oob("leaf value"))?;
                let value = slice(at, vpos, vsize).ok_or(oob("leaf value"))?;
                Ok((key, flags, value))
            })
            .collect::<Result<_, _>>()
            .map(Node::Leaf),
        _ => Err(BoltError::Corrupt {
            page: id,
            what: "neither a branch nor a leaf page",
        }),
    }
}

impl<'a> Bucket<'a> {
    /// Every entry, in key order.
    pub fn entries(&self) -> Result<Vec<(&'a [u8], Value<'a>)>, BoltError> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        match self.root {
            Root::Inline(page) => self.leaf_entries(node(page, 0)?, &mut out)?,
            Root::Page(id) => self.walk(id, 0, &mut seen, &mut out)?,
        }
        Ok(out)
    }

    fn walk(
        &self,
        id: u64,
        depth: usize,
        seen: &mut HashSet<u64>,
        out: &mut Vec<(&'a [u8], Value<'a>)>,
    ) -> Result<(), BoltError> {
        if depth > MAX_DEPTH {
            return Err(BoltError::TooDeep);
        }
        if !seen.insert(id) {
            return Err(BoltError::Corrupt {
                page: id,
                what: "page reached twice in one bucket",
            });
        }
        match node(self.db.page(id)?, id)? {
            Node::Branch(children) => {
                for (_, child) in children {
                    self.walk(child, depth + 1, seen, out)?;
                }
                Ok(())
            }
            leaf => self.leaf_entries(leaf, out),
        }
    }

    fn leaf_entries(
        &self,
        leaf: Node<'a>,
        out: &mut Vec<(&'a [u8], Value<'a>)>,
    ) -> Result<(), BoltError> {
        let Node::Leaf(elements) = leaf else {
            return Err(BoltError::Corrupt {
                page: 0,
                what: "an inline bucket that is not a leaf",
            });
        };
        for (key, flags, value) in elements {
            let value = if flags & BUCKET_LEAF != 0 {
                Value::Bucket(self.nested(value)?)
            } else {
                Value::Bytes(value)
            };
            out.push((key, value));
        }
        Ok(())
    }

    fn nested(&self, value: &'a [u8]) -> Result<Bucket<'a>, BoltError> {
        let oob = BoltError::OutOfBounds {
            page: 0,
            what: "bucket header",
        };
        let root = u64_at(value, 0).ok_or(oob.clone())?;
        let root = if root == 0 {
            let page = value.get(BUCKET_HEADER..).ok_or(oob.clone())?;
            if page.len() < PAGE_HEADER {
                return Err(oob);
            }
            Root::Inline(page)
        } else {
            Root::Page(root)
        };
        Ok(Bucket { db: self.db, root })
    }

    /// The entry `key`, if there is one: one path down the tree.
    pub fn get(&self, key: &[u8]) -> Result<Option<Value<'a>>, BoltError> {
        let (mut page, mut id) = match self.root {
            Root::Inline(page) => (page, 0),
            Root::Page(id) => (self.db.page(id)?, id),
        };
        for _ in 0..=MAX_DEPTH {
            match node(page, id)? {
                Node::Branch(children) => {
                    // The last child whose first key is at most `key`.
                    let Some(&(_, child)) = children
                        .iter()
                        .take_while(|(k, _)| *k <= key)
                        .last()
                        .or(children.first())
                    else {
                        return Ok(None);
                    };
                    id = child;
                    page = self.db.page(id)?;
                }
                Node::Leaf(elements) => {
                    let Some(&(_, flags, value)) = elements.iter().find(|(k, _, _)| *k == key)
                    else {
                        return Ok(None);
                    };
                    return Ok(Some(if flags & BUCKET_LEAF != 0 {
                        Value::Bucket(self.nested(value)?)
                    } else {
                        Value::Bytes(value)
                    }));
                }
            }
        }
        Err(BoltError::TooDeep)
    }

    /// The nested bucket `key`, if there is one.
    pub fn bucket(&self, key: &[u8]) -> Result<Option<Bucket<'a>>, BoltError> {
        Ok(match self.get(key)? {
            Some(Value::Bucket(b)) => Some(b),
            _ => None,
        })
    }

    /// The nested bucket at `path` (each a key below the last).
    pub fn path(&self, path: &[&[u8]]) -> Result<Option<Bucket<'a>>, BoltError> {
        let mut at = *self;
        for key in path {
            match at.bucket(key)? {
                Some(b) => at = b,
                None => return Ok(None),
            }
        }
        Ok(Some(at))
    }

    /// The plain value `key`, if there is one.
    pub fn value(&self, key: &[u8]) -> Result<Option<&'a [u8]>, BoltError> {
        Ok(match self.get(key)? {
            Some(Value::Bytes(v)) => Some(v),
            _ => None,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const PS: usize = 4096;

    /// A leaf page (unpadded): `(flags, key, value)` elements.
    fn leaf(id: u64, elems: &[(u32, &[u8], &[u8])]) -> Vec<u8> {
        let mut p = id.to_le_bytes().to_vec();
        p.extend(LEAF_PAGE.to_le_bytes());
        p.extend((elems.len() as u16).to_le_bytes());
        p.extend(0u32.to_le_bytes());
        let mut data = Vec::new();
        for (i, (flags, k, v)) in elems.iter().enumerate() {
            let pos = (elems.len() - i) * ELEMENT + data.len();
            for f in [*flags, pos as u32, k.len() as u32, v.len() as u32] {
                p.extend(f.to_le_bytes());
            }
            data.extend_from_slice(k);
            data.extend_from_slice(v);
        }
        p.extend(data);
        p
    }

    fn branch(id: u64, elems: &[(&[u8], u64)]) -> Vec<u8> {
        let mut p = id.to_le_bytes().to_vec();
        p.extend(BRANCH_PAGE.to_le_bytes());
        p.extend((elems.len() as u16).to_le_bytes());
        p.extend(0u32.to_le_bytes());
        let mut data = Vec::new();
        for (i, (k, child)) in elems.iter().enumerate() {
            let pos = (elems.len() - i) * ELEMENT + data.len();
            p.extend((pos as u32).to_le_bytes());
            p.extend((k.len() as u32).to_le_bytes());
            p.extend(child.to_le_bytes());
            data.extend_from_slice(k);
        }
        p.extend(data);
        p
    }

    fn meta(id: u64, root: u64, high_water: u64, txid: u64) -> Vec<u8> {
        let mut m = Vec::new();
        for v in [MAGIC, VERSION, PS as u32, 0] {
            m.extend(v.to_le_bytes());
        }
        for v in [root, 0, 0, high_water, txid] {
            m.extend(v.to_le_bytes());
        }
        m.extend(fnv1a64(&m).to_le_bytes());
        let mut p = id.to_le_bytes().to_vec();
        p.extend(4u16.to_le_bytes());
        p.extend([0; 6]);
        p.extend(m);
        p
    }

    fn bucket_value(root: u64, inline: &[u8]) -> Vec<u8> {
        let mut v = root.to_le_bytes().to_vec();
        v.extend(0u64.to_le_bytes());
        v.extend_from_slice(inline);
        v
    }

    /// A small bolt file: `v1` is a bucket whose tree is a branch over two
    /// leaves, one holding an inline bucket. Meta page 1 is the newer.
    pub(crate) fn sample() -> Vec<u8> {
        let inline = leaf(0, &[(0, b"x", b"y")]);
        let pages = [
            meta(0, 2, 6, 1),
            meta(1, 2, 6, 2),
            leaf(2, &[(BUCKET_LEAF, b"v1", &bucket_value(3, &[]))]),
            branch(3, &[(b"a", 4), (b"m", 5)]),
            leaf(
                4,
                &[
                    (0, b"a", b"1"),
                    (BUCKET_LEAF, b"b", &bucket_value(0, &inline)),
                ],
            ),
            leaf(5, &[(0, b"m", b"2"), (0, b"z", b"3")]),
        ];
        let mut file = Vec::new();
        for mut p in pages {
            p.resize(PS, 0);
            file.extend(p);
        }
        file
    }

    #[test]
    fn reads_branches_leaves_and_inline_buckets() {
        let file = sample();
        let db = Db::open(&file).unwrap();
        let v1 = db.root().bucket(b"v1").unwrap().unwrap();
        let keys: Vec<_> = v1.entries().unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, [b"a".as_ref(), b"b", b"m", b"z"]);
        assert_eq!(v1.value(b"z").unwrap(), Some(b"3".as_ref()));
        assert_eq!(v1.value(b"a").unwrap(), Some(b"1".as_ref()));
        assert_eq!(v1.value(b"c").unwrap(), None);
        let b = v1.bucket(b"b").unwrap().unwrap();
        assert_eq!(b.value(b"x").unwrap(), Some(b"y".as_ref()));
        assert_eq!(
            db.root()
                .path(&[b"v1", b"b"])
                .unwrap()
                .unwrap()
                .value(b"x")
                .unwrap(),
            Some(b"y".as_ref())
        );
        // A torn first meta page: the second still opens the file.
        let mut torn = file.clone();
        torn[20] ^= 0xff;
        assert!(Db::open(&torn).is_ok());
        torn[PS + 20] ^= 0xff;
        assert_eq!(Db::open(&torn).unwrap_err(), BoltError::NoMeta);
        // A branch pointing at itself is corruption, not a loop.
        let mut looped = file.clone();
        looped[3 * PS + 16 + 8..3 * PS + 16 + 16].copy_from_slice(&3u64.to_le_bytes());
        let v1 = Db::open(&looped)
            .unwrap()
            .root()
            .bucket(b"v1")
            .unwrap()
            .unwrap();
        assert!(v1.entries().is_err());
        assert!(v1.get(b"a").is_err());
    }
}
