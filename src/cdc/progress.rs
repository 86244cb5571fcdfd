//! The applied position, kept on the target next to the rows it describes.
//!
//! `pgcutover.migration.applied_lsn` is the end of the last source transaction whose changes
//! committed on the target; it is written by the same target transaction (see
//! [`super::apply`]). After any crash the stream restarts there, and every source transaction
//! that committed before it is skipped, so nothing is applied twice; the slot never confirms
//! more than it (see [`super::stream`]), so nothing is lost.

use tokio_postgres::Client;

use crate::pg::{Lsn, SqlContext, SqlError};

/// Parameters: the position as text, the migration id.
pub const RECORD_SQL: &str = "UPDATE pgcutover.migration \
     SET applied_lsn = $1::text::pg_lsn, stage = 'cdc', updated_at = now() WHERE id = $2";

/// The recorded position, if any transaction was applied yet.
pub async fn applied_lsn(client: &Client, id: &str) -> Result<Option<Lsn>, SqlError> {
    let row = client
        .query_opt(
            "SELECT applied_lsn::text FROM pgcutover.migration WHERE id = $1",
            &[&id],
        )
        .await
        .ctx(|| "reading the applied position on the target".into())?;
    Ok(row
        .and_then(|r| r.get::<_, Option<String>>(0))
        .and_then(|s| s.parse().ok()))
}
