//! The field reader and writer every control and cluster payload is built with: little
//! endian fields, each length checked against the bytes that are there, one error type that
//! names the field that did not fit.

/// Why a payload could not be read: the field that did not fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadError(pub &'static str);

impl std::fmt::Display for PayloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed payload: field {}", self.0)
    }
}

impl std::error::Error for PayloadError {}

/// Reads fields off the front of a payload. Never allocates more than the bytes it was given.
pub(crate) struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], PayloadError> {
        if self.0.len() < n {
            return Err(PayloadError(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, PayloadError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, PayloadError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A u32 that must be 0 or 1, so decoding stays canonical.
    pub(crate) fn bool(&mut self, what: &'static str) -> Result<bool, PayloadError> {
        match self.u32(what)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(PayloadError(what)),
        }
    }

    /// A u32 length, then that many bytes.
    pub(crate) fn counted(&mut self, what: &'static str) -> Result<Vec<u8>, PayloadError> {
        let len = self.u32(what)? as usize;
        Ok(self.take(len, what)?.to_vec())
    }

    /// A u32 count of items each at least `min_item` bytes long, refused before anything is
    /// allocated when the rest of the payload cannot hold them.
    pub(crate) fn count(&mut self, min_item: usize, what: &'static str) -> Result<usize, PayloadError> {
        let n = self.u32(what)? as usize;
        match n.checked_mul(min_item) {
            Some(needed) if needed <= self.0.len() => Ok(n),
            _ => Err(PayloadError(what)),
        }
    }

    pub(crate) fn rest(self) -> &'a [u8] {
        self.0
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Appends fields to a payload.
pub(crate) struct Writer<'a>(pub &'a mut Vec<u8>);

impl Writer<'_> {
    pub(crate) fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    /// A u32 length, then the bytes. Callers bound payloads far below 4 GiB.
    pub(crate) fn counted(&mut self, b: &[u8]) {
        self.count(b.len());
        self.0.extend_from_slice(b);
    }

    pub(crate) fn count(&mut self, n: usize) {
        self.u32(u32::try_from(n).expect("payload part larger than 4 GiB"));
    }
}
