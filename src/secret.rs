//! Secrets (passwords, API tokens) in a type that cannot print itself.
//!
//! `Secret` has a redacted `Debug` and `Display` and no `Serialize`, so a secret can only leave
//! the process through [`Secret::expose`], which is called in exactly the places that hand it
//! to a server (the connection handshake, `PGPASSWORD` of a child process, the token check).

use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compare in time that does not depend on where the first difference is (API tokens).
    pub fn constant_time_eq(&self, other: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), other.as_bytes());
        let mut diff = a.len() ^ b.len();
        for i in 0..a.len().max(b.len()) {
            let x = a.get(i).copied().unwrap_or(0);
            let y = b.get(i).copied().unwrap_or(0);
            diff |= usize::from(x ^ y);
        }
        diff == 0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_itself() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?} {s:#?}"), "*** Secret(***) Secret(***)");
        assert!(s.constant_time_eq("hunter2"));
        assert!(!s.constant_time_eq("hunter"));
        assert!(!s.constant_time_eq("hunter22"));
        assert!(!s.constant_time_eq(""));
    }
}
