//! pgoutput, protocol version 1, as a pure function from bytes to typed messages.
//!
//! Input is the payload of one `XLogData` message of the replication stream (or one `data`
//! value of `pg_logical_slot_peek_binary_changes`). The decoder never panics and never reads
//! past the input: every length is checked before use, and a counted list never allocates
//! more than the input could hold. Column values are slices of the input (`Bytes`), so
//! decoding copies no row data. Format: <https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html>.

use bytes::{Buf, Bytes};

use crate::pg::Lsn;

/// Microseconds since 2000-01-01 00:00:00 UTC (PostgreSQL's epoch).
pub type PgTimestamp = i64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Begin {
        final_lsn: Lsn,
        commit_ts: PgTimestamp,
        xid: u32,
    },
    Commit {
        flags: u8,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_ts: PgTimestamp,
    },
    Origin {
        lsn: Lsn,
        name: String,
    },
    Relation(Relation),
    Type {
        oid: u32,
        namespace: String,
        name: String,
    },
    Insert {
        relid: u32,
        new: Tuple,
    },
    Update {
        relid: u32,
        /// `K`: the old key (the key changed); `O`: the whole old row (REPLICA IDENTITY FULL).
        old: Option<(OldKind, Tuple)>,
        new: Tuple,
    },
    Delete {
        relid: u32,
        old: (OldKind, Tuple),
    },
    Truncate {
        cascade: bool,
        restart_identity: bool,
        relids: Vec<u32>,
    },
    Message {
        transactional: bool,
        lsn: Lsn,
        prefix: String,
        content: Bytes,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OldKind {
    Key,
    Full,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    pub relid: u32,
    pub namespace: String,
    pub name: String,
    /// `d`, `n`, `f` or `i`, like `pg_class.relreplident`.
    pub replica_identity: u8,
    pub columns: Vec<RelColumn>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelColumn {
    /// Part of the replica identity key.
    pub key: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Null,
    /// A TOASTed value that did not change: the target must keep what it has.
    UnchangedToast,
    Text(Bytes),
    Binary(Bytes),
}

pub type Tuple = Vec<Value>;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("pgoutput message is empty")]
    Empty,
    #[error("unknown pgoutput message type {0:#04x}")]
    UnknownType(u8),
    #[error("pgoutput message {kind:?} ends early (needs {needed} more bytes at offset {at})")]
    Truncated {
        kind: char,
        at: usize,
        needed: usize,
    },
    #[error("pgoutput message {kind:?}: {what}")]
    Malformed { kind: char, what: String },
    #[error("pgoutput message {kind:?} has {extra} bytes left over")]
    TrailingBytes { kind: char, extra: usize },
}

struct Reader {
    buf: Bytes,
    start_len: usize,
    kind: char,
}

impl Reader {
    fn at(&self) -> usize {
        self.start_len - self.buf.remaining()
    }
    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.buf.remaining() < n {
            Err(DecodeError::Truncated {
                kind: self.kind,
                at: self.at(),
                needed: n - self.buf.remaining(),
            })
        } else {
            Ok(())
        }
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }
    fn i16(&mut self) -> Result<i16, DecodeError> {
        self.need(2)?;
        Ok(self.buf.get_i16())
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }
    fn i32(&mut self) -> Result<i32, DecodeError> {
        self.need(4)?;
        Ok(self.buf.get_i32())
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.need(8)?;
        Ok(self.buf.get_u64())
    }
    fn lsn(&mut self) -> Result<Lsn, DecodeError> {
        self.u64().map(Lsn)
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        self.need(8)?;
        Ok(self.buf.get_i64())
    }
    fn bytes(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        self.need(n)?;
        Ok(self.buf.split_to(n))
    }
    fn cstring(&mut self) -> Result<String, DecodeError> {
        let Some(nul) = self.buf.iter().position(|&b| b == 0) else {
            return Err(self.malformed("a string has no terminating NUL"));
        };
        let s = self.buf.split_to(nul);
        self.buf.advance(1);
        String::from_utf8(s.to_vec()).map_err(|_| self.malformed("a string is not UTF-8"))
    }
    fn malformed(&self, what: &str) -> DecodeError {
        DecodeError::Malformed {
            kind: self.kind,
            what: what.into(),
        }
    }
    /// A count read from the input, refused when the rest of the input could not hold that
    /// many items of at least `min_item` bytes (so garbage cannot make us allocate).
    fn count(&mut self, n: i64, min_item: usize) -> Result<usize, DecodeError> {
        if n < 0 {
            return Err(self.malformed("a count is negative"));
        }
        let n = n as usize;
        if n.saturating_mul(min_item) > self.buf.remaining() {
            return Err(DecodeError::Truncated {
                kind: self.kind,
                at: self.at(),
                needed: n.saturating_mul(min_item) - self.buf.remaining(),
            });
        }
        Ok(n)
    }
    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let n = self.i16()?;
        let n = self.count(i64::from(n), 1)?;
        let mut values = Vec::with_capacity(n);
        for _ in 0..n {
            values.push(match self.u8()? {
                b'n' => Value::Null,
                b'u' => Value::UnchangedToast,
                b't' => {
                    let len = self.u32()? as usize;
                    Value::Text(self.bytes(len)?)
                }
                b'b' => {
                    let len = self.u32()? as usize;
                    Value::Binary(self.bytes(len)?)
                }
                other => {
                    return Err(self.malformed(&format!("unknown column kind {other:#04x}")));
                }
            });
        }
        Ok(values)
    }
    fn old_kind(&self, tag: u8) -> Option<OldKind> {
        match tag {
            b'K' => Some(OldKind::Key),
            b'O' => Some(OldKind::Full),
            _ => None,
        }
    }
}

/// Decode one pgoutput message.
pub fn decode(input: Bytes) -> Result<Message, DecodeError> {
    let Some(&tag) = input.first() else {
        return Err(DecodeError::Empty);
    };
    let mut r = Reader {
        start_len: input.len(),
        buf: input.slice(1..),
        kind: tag as char,
    };
    let msg = match tag {
        b'B' => Message::Begin {
            final_lsn: r.lsn()?,
            commit_ts: r.i64()?,
            xid: r.u32()?,
        },
        b'C' => Message::Commit {
            flags: r.u8()?,
            commit_lsn: r.lsn()?,
            end_lsn: r.lsn()?,
            commit_ts: r.i64()?,
        },
        b'O' => Message::Origin {
            lsn: r.lsn()?,
            name: r.cstring()?,
        },
        b'R' => {
            let relid = r.u32()?;
            let namespace = r.cstring()?;
            let name = r.cstring()?;
            let replica_identity = r.u8()?;
            let n = r.i16()?;
            // flags + NUL + type oid + typmod = at least 10 bytes a column
            let n = r.count(i64::from(n), 10)?;
            let mut columns = Vec::with_capacity(n);
            for _ in 0..n {
                let flags = r.u8()?;
                columns.push(RelColumn {
                    key: flags & 1 == 1,
                    name: r.cstring()?,
                    type_oid: r.u32()?,
                    type_modifier: r.i32()?,
                });
            }
            Message::Relation(Relation {
                relid,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => Message::Type {
            oid: r.u32()?,
            namespace: r.cstring()?,
            name: r.cstring()?,
        },
        b'I' => {
            let relid = r.u32()?;
            if r.u8()? != b'N' {
                return Err(r.malformed("an insert has no new tuple"));
            }
            Message::Insert {
                relid,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let relid = r.u32()?;
            let mut tag = r.u8()?;
            let old = match r.old_kind(tag) {
                Some(kind) => {
                    let t = r.tuple()?;
                    tag = r.u8()?;
                    Some((kind, t))
                }
                None => None,
            };
            if tag != b'N' {
                return Err(r.malformed("an update has no new tuple"));
            }
            Message::Update {
                relid,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let relid = r.u32()?;
            let tag = r.u8()?;
            let kind = r
                .old_kind(tag)
                .ok_or_else(|| r.malformed("a delete has no old key or row"))?;
            Message::Delete {
                relid,
                old: (kind, r.tuple()?),
            }
        }
        b'T' => {
            let n = r.u32()?;
            let options = r.u8()?;
            let n = r.count(i64::from(n), 4)?;
            let mut relids = Vec::with_capacity(n);
            for _ in 0..n {
                relids.push(r.u32()?);
            }
            Message::Truncate {
                cascade: options & 1 != 0,
                restart_identity: options & 2 != 0,
                relids,
            }
        }
        b'M' => {
            let flags = r.u8()?;
            let lsn = r.lsn()?;
            let prefix = r.cstring()?;
            let len = r.u32()? as usize;
            Message::Message {
                transactional: flags & 1 != 0,
                lsn,
                prefix,
                content: r.bytes(len)?,
            }
        }
        other => return Err(DecodeError::UnknownType(other)),
    };
    if r.buf.has_remaining() {
        return Err(DecodeError::TrailingBytes {
            kind: r.kind,
            extra: r.buf.remaining(),
        });
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(parts: &[&[u8]]) -> Bytes {
        Bytes::from(parts.concat())
    }

    #[test]
    fn begin_commit_and_an_update_with_old_key() {
        let b = bytes(&[
            b"B",
            &0x1_0000_0010u64.to_be_bytes(),
            &7i64.to_be_bytes(),
            &42u32.to_be_bytes(),
        ]);
        assert_eq!(
            decode(b).unwrap(),
            Message::Begin {
                final_lsn: Lsn(0x1_0000_0010),
                commit_ts: 7,
                xid: 42
            }
        );
        let u = bytes(&[
            b"U",
            &16384u32.to_be_bytes(),
            b"K",
            &1i16.to_be_bytes(),
            b"t",
            &1u32.to_be_bytes(),
            b"1",
            b"N",
            &3i16.to_be_bytes(),
            b"n",
            b"u",
            b"t",
            &0u32.to_be_bytes(),
        ]);
        assert_eq!(
            decode(u).unwrap(),
            Message::Update {
                relid: 16384,
                old: Some((OldKind::Key, vec![Value::Text(Bytes::from_static(b"1"))])),
                new: vec![
                    Value::Null,
                    Value::UnchangedToast,
                    Value::Text(Bytes::new())
                ],
            }
        );
    }

    #[test]
    fn every_prefix_of_a_valid_message_is_an_error_not_a_panic() {
        let rel = bytes(&[
            b"R",
            &1u32.to_be_bytes(),
            b"public\0",
            b"t\0",
            b"d",
            &2i16.to_be_bytes(),
            &[1],
            b"id\0",
            &23u32.to_be_bytes(),
            &(-1i32).to_be_bytes(),
            &[0],
            b"v\0",
            &25u32.to_be_bytes(),
            &(-1i32).to_be_bytes(),
        ]);
        assert!(
            matches!(decode(rel.clone()).unwrap(), Message::Relation(r) if r.columns.len() == 2 && r.columns[0].key)
        );
        for cut in 0..rel.len() {
            assert!(
                decode(rel.slice(..cut)).is_err(),
                "prefix of {cut} bytes decoded"
            );
        }
        let mut longer = rel.to_vec();
        longer.push(0);
        assert!(matches!(
            decode(Bytes::from(longer)),
            Err(DecodeError::TrailingBytes { .. })
        ));
    }

    #[test]
    fn garbage_never_panics_or_allocates_wildly() {
        // xorshift: deterministic garbage, biased towards valid tags.
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let tags = b"BCORYIUDTMxN\0";
        for _ in 0..200_000 {
            let len = (next() % 64) as usize;
            let mut v: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Some(first) = v.first_mut() {
                *first = tags[(next() % tags.len() as u64) as usize];
            }
            let _ = decode(Bytes::from(v));
        }
        // A huge announced count on a short input is refused up front.
        let t = bytes(&[b"T", &u32::MAX.to_be_bytes(), &[0]]);
        assert!(matches!(decode(t), Err(DecodeError::Truncated { .. })));
    }
}
