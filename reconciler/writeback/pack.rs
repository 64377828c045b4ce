//! One pack file for the objects of a large commit, instead of a loose file each.
//!
//! A loose object is a file of its own, and creating a file cost about 0.8 ms on this
//! project's machines (ext4): a mass change's batch commit of a thousand status files
//! spent most of its pass creating them (`benches/mass.rs` (e)). Here the objects are
//! kept in memory while the commit's trees are built, then written as one version-2
//! pack, undeltified and compressed fast, through libgit2's pack writer, which indexes
//! it (an `.idx` beside it) and checks every object's id and the trailing checksum.
//!
//! Invariants: every object the caller wrote is in the object database once `write`
//! returns `Ok` (libgit2 finds a pack added under it: it looks again on a miss); ids are
//! Git's (`Oid::hash_object`), so a packed object is the loose one bit for bit.

use std::io::Write;

use anyhow::{Context, Result};
use git2::{ObjectType, Odb, Oid};
use sha1::{Digest, Sha1};

/// Objects waiting for their pack, in the order written.
#[derive(Debug, Default)]
pub struct Pending {
    objects: Vec<(ObjectType, Vec<u8>)>,
    /// The ids of `objects`: each object goes into the pack once (libgit2's indexer
    /// refuses a pack that holds one twice).
    ids: std::collections::HashSet<Oid>,
}

impl Pending {
    /// Keep `data` as an object of `kind`; its id.
    pub fn add(&mut self, kind: ObjectType, data: &[u8]) -> Result<Oid> {
        let id = Oid::hash_object(kind, data)?;
        if self.ids.insert(id) {
            self.objects.push((kind, data.to_vec()));
        }
        Ok(id)
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// The pack file's bytes: header, each object (type and size, then its zlib
    /// stream), the SHA-1 of all that.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let raw: usize = self.objects.iter().map(|(_, d)| d.len()).sum();
        let mut out = Vec::with_capacity(32 + raw / 2);
        out.extend_from_slice(b"PACK");
        out.extend_from_slice(&2u32.to_be_bytes());
        let count = u32::try_from(self.objects.len()).context("too many objects for a pack")?;
        out.extend_from_slice(&count.to_be_bytes());
        for (kind, data) in &self.objects {
            out.extend_from_slice(&object_header(*kind, data.len())?);
            let mut z = flate2::write::ZlibEncoder::new(&mut out, flate2::Compression::fast());
            z.write_all(data)?;
            z.finish()?;
        }
        let sum = Sha1::digest(&out);
        out.extend_from_slice(&sum);
        Ok(out)
    }

    /// Write the pack into `odb` (nothing when no object is waiting).
    pub fn write(&self, odb: &Odb<'_>) -> Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        let bytes = self.encode()?;
        let mut file = odb.packwriter()?;
        file.write_all(&bytes).context("cannot write a pack file")?;
        file.commit().context("cannot index the pack file")?;
        Ok(())
    }
}

/// An object's entry header: its type in bits 4–6 of the first byte, its size in the
/// low 4 bits and then 7 bits per byte, the high bit saying another byte follows.
fn object_header(kind: ObjectType, size: usize) -> Result<Vec<u8>> {
    let code: u8 = match kind {
        ObjectType::Commit => 1,
        ObjectType::Tree => 2,
        ObjectType::Blob => 3,
        ObjectType::Tag => 4,
        other => anyhow::bail!("a {other} cannot be packed"),
    };
    let mut out = Vec::with_capacity(4);
    let mut rest = size >> 4;
    let mut byte = (code << 4) | u8::try_from(size & 0x0f).unwrap_or(0);
    while rest > 0 {
        out.push(byte | 0x80);
        byte = u8::try_from(rest & 0x7f).unwrap_or(0);
        rest >>= 7;
    }
    out.push(byte);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_headers_carry_type_and_size_as_git_reads_them() {
        // Sizes below 16 fit the first byte; then 7 bits a byte, least significant first.
        assert_eq!(object_header(ObjectType::Blob, 5).ok(), Some(vec![0x35]));
        assert_eq!(
            object_header(ObjectType::Tree, 16).ok(),
            Some(vec![0xa0, 0x01])
        );
        assert_eq!(
            object_header(ObjectType::Commit, 300).ok(),
            Some(vec![0x9c, 0x12])
        );
        assert_eq!(
            object_header(ObjectType::Blob, 1 << 20).ok(),
            Some(vec![0xb0, 0x80, 0x80, 0x04])
        );
        assert!(object_header(ObjectType::Any, 1).is_err());
    }

    #[test]
    fn regression_a_pack_with_an_object_added_twice_is_written_and_reads_back() {
        // The empty object is added twice: packed twice, libgit2's indexer refused the
        // whole pack ("Write error").
        let dir = tempfile::tempdir().expect("temp dir");
        let repo = git2::Repository::init_bare(dir.path()).expect("bare repository");
        let odb = repo.odb().expect("odb");
        let objects: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"plan: web\n".to_vec(),
            Vec::new(),
            b"phase: Succeeded\n".repeat(1000),
        ];
        let mut pending = Pending::default();
        let ids: Vec<Oid> = objects
            .iter()
            .map(|d| pending.add(ObjectType::Blob, d).expect("id"))
            .collect();
        pending.write(&odb).expect("pack written");
        for (id, data) in ids.iter().zip(&objects) {
            assert_eq!(&odb.read(*id).expect("object in the pack").data(), data);
        }
    }

    #[test]
    fn a_pack_of_many_objects_is_indexed_and_every_object_reads_back_with_its_id() {
        let dir = tempfile::tempdir().expect("temp dir");
        let repo = git2::Repository::init_bare(dir.path()).expect("bare repository");
        let odb = repo.odb().expect("odb");
        let mut pending = Pending::default();
        let mut ids = Vec::new();
        for i in 0..300 {
            // Sizes across the one-, two- and three-byte headers.
            let data = format!("status {i}\n").repeat(i * 7 + 1);
            ids.push((
                pending.add(ObjectType::Blob, data.as_bytes()).expect("id"),
                data,
            ));
        }
        pending.write(&odb).expect("pack written");
        let packs = std::fs::read_dir(dir.path().join("objects/pack"))
            .expect("pack folder")
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
            .count();
        assert_eq!(packs, 1);
        let loose = std::fs::read_dir(dir.path().join("objects"))
            .expect("objects")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().len() == 2)
            .count();
        assert_eq!(loose, 0, "no loose object folders");
        for (id, data) in &ids {
            let obj = odb.read(*id).expect("object in the pack");
            assert_eq!(obj.data(), data.as_bytes());
            assert_eq!(obj.kind(), ObjectType::Blob);
        }
    }
}
