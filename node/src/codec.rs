//! The canonical binary encoding shared by entries, certificates and proofs.
//!
//! Big-endian integers, length-prefixed strings and byte strings. Every read checks its
//! length against what is left before it allocates, so a hostile length prefix cannot make
//! the node allocate more than the frame it already holds.

/// A read past the end, or a malformed field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("truncated")]
    Truncated,
    #[error("invalid utf-8")]
    Utf8,
    #[error("trailing bytes")]
    Trailing,
}

/// Appends fields to a buffer.
#[derive(Debug, Default)]
pub struct Writer(Vec<u8>);

impl Writer {
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    pub fn raw(&mut self, v: &[u8]) {
        self.0.extend_from_slice(v);
    }
    /// A string of at most 65535 bytes; callers bound their strings well below that.
    pub fn str16(&mut self, v: &str) {
        self.bytes16(v.as_bytes());
    }
    pub fn bytes16(&mut self, v: &[u8]) {
        let len = u16::try_from(v.len()).unwrap_or(u16::MAX);
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(&v[..usize::from(len)]);
    }
    pub fn bytes32(&mut self, v: &[u8]) {
        let len = u32::try_from(v.len()).unwrap_or(u32::MAX);
        self.u32(len);
        self.0.extend_from_slice(&v[..len as usize]);
    }
    pub fn into_inner(self) -> Vec<u8> {
        self.0
    }
}

/// Reads fields from a borrowed buffer.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.buf.len() < n {
            return Err(Error::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    pub fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16, Error> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    pub fn u32(&mut self) -> Result<u32, Error> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(a))
    }
    pub fn u64(&mut self) -> Result<u64, Error> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    pub fn array32(&mut self) -> Result<[u8; 32], Error> {
        let mut a = [0u8; 32];
        a.copy_from_slice(self.take(32)?);
        Ok(a)
    }
    pub fn array64(&mut self) -> Result<[u8; 64], Error> {
        let mut a = [0u8; 64];
        a.copy_from_slice(self.take(64)?);
        Ok(a)
    }
    pub fn bytes16(&mut self) -> Result<&'a [u8], Error> {
        let n = usize::from(self.u16()?);
        self.take(n)
    }
    pub fn bytes32(&mut self) -> Result<&'a [u8], Error> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    pub fn str16(&mut self) -> Result<String, Error> {
        let b = self.bytes16()?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| Error::Utf8)
    }
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }
    pub fn finish(self) -> Result<(), Error> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(Error::Trailing)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let mut w = Writer::default();
        w.u8(7);
        w.u32(9);
        w.u64(u64::MAX);
        w.str16("état");
        w.bytes32(&[1, 2, 3]);
        let bytes = w.into_inner();
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u8().unwrap(), 7);
        assert_eq!(r.u32().unwrap(), 9);
        assert_eq!(r.u64().unwrap(), u64::MAX);
        assert_eq!(r.str16().unwrap(), "état");
        assert_eq!(r.bytes32().unwrap(), &[1, 2, 3]);
        r.finish().unwrap();
        for cut in 0..bytes.len() {
            let mut r = Reader::new(&bytes[..cut]);
            let all = (|| {
                r.u8()?;
                r.u32()?;
                r.u64()?;
                r.str16()?;
                r.bytes32()?;
                Ok::<_, Error>(())
            })();
            assert_eq!(all, Err(Error::Truncated), "cut at {cut}");
        }
    }

    #[test]
    fn hostile_length_prefix_does_not_allocate() {
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff, 1]);
        assert_eq!(r.bytes32(), Err(Error::Truncated));
    }
}
