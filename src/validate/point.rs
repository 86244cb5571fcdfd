//! Sessions at the consistent [`Point`](super::Point): one source and one target session per
//! job, all seeing the same data on their side (see "The consistent point" in [`super`]).

use std::time::Duration;

use tokio_postgres::Client;

use super::{Consistency, Point, ValidateError};
use crate::config::Config;
use crate::pg::slot::create_slot_with_snapshot;
use crate::pg::{Lsn, SqlContext, server_major};

/// How long the apply may take to reach the source snapshot's position.
const HOLD_WAIT: Duration = Duration::from_secs(60);

/// One source session and one target session per job, at the consistent point.
pub(super) type Pairs = Vec<(Client, Client)>;

pub(super) async fn open_sessions(
    cfg: &Config,
    jobs: usize,
    point: Point<'_>,
) -> Result<(Pairs, Consistency), ValidateError> {
    let mut src = vec![];
    let mut tgt = vec![];
    for _ in 0..jobs {
        src.push(cfg.source.connect("pgcutover-validate").await?);
        tgt.push(cfg.target.connect("pgcutover-validate").await?);
    }
    const BEGIN: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";
    let consistency = match point {
        Point::Live => {
            return Ok((
                src.into_iter().zip(tgt).collect(),
                Consistency {
                    kind: "live".into(),
                    source_lsn: None,
                    note: "compared without snapshots while both sides may change: approximate"
                        .into(),
                },
            ));
        }
        Point::Static => {
            export_and_share(&src).await?;
            export_and_share(&tgt).await?;
            let src_lsn = lsn_of(&src[0], "SELECT pg_current_wal_lsn()::text").await?;
            let applied = lsn_of(
                &tgt[0],
                "SELECT coalesce((SELECT applied_lsn::text FROM pgcutover.migration LIMIT 1), '')",
            )
            .await
            .ok()
            .flatten();
            let mut note = "one snapshot per side: exact when nothing writes to either \
                            database (after a cutover's fence, or with replication stopped)"
                .to_string();
            if let (Some(s), Some(a)) = (src_lsn, applied)
                && s > a
            {
                note.push_str(&format!(
                    "; the target has applied the source up to {a} and the source is at {s} \
                     ({} bytes ahead), so recent changes may show as differences",
                    s.bytes_since(a)
                ));
            }
            Consistency {
                kind: "static".into(),
                source_lsn: src_lsn,
                note,
            }
        }
        Point::Held(control) => {
            // 1. Stop the apply where it is, so it cannot pass the point taken next.
            let mut first = control.hold(Lsn(0));
            first.reached(Lsn(0), HOLD_WAIT).await?;
            // 2. The source snapshot and its exact position.
            let major = server_major(&src[0]).await?;
            let slot = format!(
                "pgcutover_validate_{}",
                crate::status::unix_micros().rem_euclid(1_000_000_000)
            );
            let exported = create_slot_with_snapshot(&cfg.source, &slot, true, major).await?;
            let point_lsn = exported.lsn;
            for c in &src {
                c.batch_execute(&format!(
                    "{BEGIN}; SET TRANSACTION SNAPSHOT {}",
                    crate::pg::quote_literal(&exported.name)
                ))
                .await
                .ctx(|| "importing the source snapshot".into())?;
            }
            drop(exported);
            // 3. The apply runs on to exactly that position; the target snapshot there.
            let mut second = first.then_hold_at(point_lsn);
            let at = second.reached(point_lsn, HOLD_WAIT).await?;
            let shared = export_and_share(&tgt).await;
            second.release();
            shared?;
            Consistency {
                kind: "snapshot".into(),
                source_lsn: Some(at),
                note: format!(
                    "source and target compared at the same transaction boundary (source \
                     position {at}) while replication kept running: exact"
                ),
            }
        }
    };
    Ok((src.into_iter().zip(tgt).collect(), consistency))
}

/// Export a snapshot from the first session and import it into the others.
pub(super) async fn export_and_share(clients: &[Client]) -> Result<(), ValidateError> {
    const BEGIN: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";
    let first = &clients[0];
    first
        .batch_execute(BEGIN)
        .await
        .ctx(|| "starting a snapshot".into())?;
    let name: String = first
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .ctx(|| "exporting a snapshot".into())?
        .get(0);
    for c in &clients[1..] {
        c.batch_execute(&format!(
            "{BEGIN}; SET TRANSACTION SNAPSHOT {}",
            crate::pg::quote_literal(&name)
        ))
        .await
        .ctx(|| "importing a snapshot".into())?;
    }
    Ok(())
}

pub(super) async fn lsn_of(c: &Client, sql: &str) -> Result<Option<Lsn>, ValidateError> {
    let text: String = c
        .query_one(sql, &[])
        .await
        .ctx(|| "reading a WAL position".into())?
        .get(0);
    Ok(text.parse().ok())
}
