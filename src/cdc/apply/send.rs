//! Sending a batch: the buffer's changes as runs and scripts, each request written to its
//! session at once and its answer queued (see the module docs of [`super`] on runs, scripts
//! and pipelining), and the answers read in order.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use super::lane::{EndsCommit, Expect, InFlight, Pending, Subject};
use super::sql::{
    ArrayParam, Form, Kind, RANGE_MIN_ROWS, StmtKey, Touched, literal, param_columns, parse_int,
    range_key, statement_of, statement_sql,
};
use super::{
    Applier, ApplyError, MAX_INFLIGHT, MAX_NAMED, MAX_RUN, SCRIPT_BYTES, SCRIPT_STATEMENTS,
    bad_value,
};
use crate::cdc::coalesce::{Change, KeySet, Writeset};
use crate::cdc::relation::{RelInfo, Wire};
use crate::pg::{Lsn, error_text};

/// The wire form of each parameter of a multi-row statement (all text if the values do not
/// match the statement's parameters, which the statement then refuses).
fn wires(rel: &RelInfo, kind: &Kind, values: usize) -> Vec<Wire> {
    let wires: Vec<Wire> = param_columns(rel, kind)
        .into_iter()
        .map(|i| rel.columns[i].wire)
        .collect();
    if wires.len() == values {
        wires
    } else {
        vec![Wire::Text; values]
    }
}

/// Encode one row's values into the run's array parameters.
fn encode_row(run: &mut Run, values: Vec<Option<Bytes>>) -> Result<(), ApplyError> {
    for (column, v) in run.columns.iter_mut().zip(values) {
        column
            .push(v.as_deref())
            .map_err(|e| bad_value(&run.rel, &e.to_string()))?;
    }
    Ok(())
}

/// Consecutive changes of one kind to one table.
pub(super) struct Run {
    rel: Arc<RelInfo>,
    kind: Kind,
    /// The first row's values as they came: sent as they are if the run ends at one row (a
    /// script's `EXECUTE`), encoded into `columns` when a second row joins.
    first: Vec<Option<Bytes>>,
    /// From the second row on, one array parameter per statement parameter, each row's
    /// values encoded into them as it joins (see [`ArrayParam`]).
    columns: Vec<ArrayParam>,
    rows: usize,
    /// Keys (old and new) touched by the run's updates.
    keys: KeySet,
    limit: usize,
    /// The range of the run's integer keys so far, while it may take [`Form::Range`].
    span: Option<Span>,
}

/// Where a run's key is among its values, and the lowest and highest key so far.
#[derive(Clone, Copy, Debug)]
struct Span {
    at: usize,
    lo: i64,
    hi: i64,
}

impl Span {
    /// Take one row's key in (`None` if it is not an integer after all).
    fn widen(self, values: &[Option<Bytes>]) -> Option<Span> {
        let key: i64 = parse_int(values.get(self.at)?.as_deref()?).ok()?;
        Some(Span {
            lo: self.lo.min(key),
            hi: self.hi.max(key),
            ..self
        })
    }

    /// The run's statement form: [`Form::Range`] when its keys are dense enough that reading
    /// the table over their range costs less than looking each one up, which measured so up
    /// to a range of about four times the rows (see BENCHMARKS.md, session 17); twice is
    /// kept as the limit.
    fn form(span: Option<Span>, rows: usize) -> Form {
        match span {
            Some(s)
                if rows >= RANGE_MIN_ROWS
                    && (i128::from(s.hi) - i128::from(s.lo)) < 2 * rows as i128 =>
            {
                Form::Range
            }
            _ => Form::Rows,
        }
    }
}

impl Applier {
    /// Take a change into the batch buffer (sending the buffer first or after when it must).
    pub(super) async fn buffer_change(
        &mut self,
        rel: &Arc<RelInfo>,
        change: Change,
    ) -> Result<(), ApplyError> {
        self.batch.changes += 1;
        if self.buffer.must_flush_before(rel) {
            self.flush_buffer().await?;
        }
        self.buffer.push(rel, change);
        if self.buffer.full() {
            self.flush_buffer().await?;
        }
        Ok(())
    }

    /// Send what the buffer holds, as runs and scripts, on the batch's session.
    pub(super) async fn flush_buffer(&mut self) -> Result<(), ApplyError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let tables = self.buffer.take();
        let mut part = Writeset::with_capacity(tables.iter().map(|(_, c)| c.len()).sum());
        for (rel, changes) in &tables {
            for (change, keys) in changes {
                part.add(rel, change, *keys);
            }
        }
        self.enter_lane(&part).await?;
        self.writes.extend(part);
        for (rel, mut changes) in tables {
            let mut left = changes.len();
            for (change, keys) in changes.drain(..) {
                let (kind, values, touched) = statement_of(change, keys);
                self.add(&rel, kind, values, touched, left).await?;
                left -= 1;
            }
            self.buffer.recycle(changes);
        }
        self.flush_run().await
    }

    /// Add one row change to the current run (sending the run first when it cannot join).
    /// `left`: how many changes of this table the batch has from this one on (to size a run).
    async fn add(
        &mut self,
        rel: &Arc<RelInfo>,
        kind: Kind,
        values: Vec<Option<Bytes>>,
        touched: Touched,
        left: usize,
    ) -> Result<(), ApplyError> {
        let fits = self.run.as_ref().is_some_and(|r| {
            r.rel.relid == rel.relid
                && r.rel.generation == rel.generation
                && r.kind == kind
                && r.rows < r.limit
                && touched.iter().flatten().all(|k| !r.keys.contains(k))
        });
        if !fits {
            self.flush_run().await?;
            let limit = match kind {
                Kind::Insert | Kind::Delete => MAX_RUN,
                Kind::Update { .. } if !rel.extra_unique => MAX_RUN,
                _ => 1,
            };
            let size = limit.min(left);
            let span = range_key(rel, &kind, values.len()).map(|at| Span {
                at,
                lo: i64::MAX,
                hi: i64::MIN,
            });
            self.run = Some(Run {
                rel: rel.clone(),
                kind,
                first: Vec::new(),
                columns: Vec::new(),
                rows: 0,
                keys: KeySet::with_capacity_and_hasher(size, Default::default()),
                limit,
                span,
            });
        }
        let run = self.run.as_mut().expect("a run was just ensured");
        run.span = run.span.and_then(|s| s.widen(&values));
        match run.rows {
            0 => run.first = values,
            1 => {
                let size = run.limit.min(left + 1);
                let first = std::mem::take(&mut run.first);
                run.columns = wires(&run.rel, &run.kind, values.len())
                    .into_iter()
                    .enumerate()
                    .map(|(i, wire)| {
                        ArrayParam::new(wire, size, first.get(i).and_then(|v| v.as_deref()))
                    })
                    .collect();
                encode_row(run, first)?;
                encode_row(run, values)?;
            }
            _ => encode_row(run, values)?,
        }
        run.rows += 1;
        run.keys.extend(touched.iter().flatten());
        if run.rows >= run.limit {
            self.flush_run().await?;
        }
        Ok(())
    }

    async fn flush_run(&mut self) -> Result<(), ApplyError> {
        let Some(run) = self.run.take() else {
            return Ok(());
        };
        if run.rows > 1 {
            return self.send_multi(run).await;
        }
        let key = StmtKey {
            relid: run.rel.relid,
            generation: run.rel.generation,
            kind: run.kind.clone(),
            form: Form::Row,
        };
        let lane_index = self.current();
        let lane = &mut self.lanes[lane_index];
        let name = match lane.named.get(&key) {
            Some(n) => n.clone(),
            None => {
                // Shapes are few in practice (unchanged TOAST columns, and NULL old values
                // of a table without a key, make more of them), but not bounded: past a
                // limit the session's ones are freed, after the statements queued before.
                if lane.named.len() >= MAX_NAMED {
                    for (_, name) in lane.named.drain() {
                        lane.script.push_str(&format!("DEALLOCATE {name};\n"));
                        lane.script_expect.push(None);
                    }
                }
                lane.prepared += 1;
                let name = format!("pgc_{}", lane.prepared);
                let types = vec!["text"; run.first.len()].join(", ");
                let sql = statement_sql(&run.rel, &run.kind, Form::Row);
                lane.script
                    .push_str(&format!("PREPARE {name} ({types}) AS {sql};\n"));
                // Answered by a CommandComplete too; an error there names the table.
                lane.script_expect
                    .push(Some((0, Subject::Table(run.rel.clone()))));
                lane.named.insert(key, name.clone());
                name
            }
        };
        let mut args = Vec::with_capacity(run.first.len());
        for v in &run.first {
            args.push(literal(&run.rel, v)?);
        }
        lane.script
            .push_str(&format!("EXECUTE {name}({});\n", args.join(", ")));
        let want = match run.kind {
            Kind::Insert => 0,
            _ => 1,
        };
        lane.script_expect
            .push(Some((want, Subject::Table(run.rel.clone()))));
        if lane.script_expect.len() >= SCRIPT_STATEMENTS || lane.script.len() >= SCRIPT_BYTES {
            self.flush_script(lane_index).await?;
        }
        Ok(())
    }

    /// A run of several rows: one extended-protocol statement with a binary array per
    /// parameter (no quoting, no array parsing on the target).
    async fn send_multi(&mut self, run: Run) -> Result<(), ApplyError> {
        let form = Span::form(run.span, run.rows);
        let key = StmtKey {
            relid: run.rel.relid,
            generation: run.rel.generation,
            kind: run.kind.clone(),
            form,
        };
        let lane = self.current();
        let stmt = match self.lanes[lane].extended.get(&key) {
            Some(s) => s.clone(),
            None => {
                self.flush_script(lane).await?;
                let sql = statement_sql(&run.rel, &run.kind, form);
                // Answered after everything queued before it on the session.
                let waiting = self.lanes[lane].wait_front();
                let prepared = self.lanes[lane].client.prepare(&sql).await;
                drop(waiting);
                match prepared {
                    Ok(s) => {
                        self.lanes[lane].extended.insert(key, s.clone());
                        s
                    }
                    Err(e) => return Err(self.first_error(&run.rel, e).await),
                }
            }
        };
        let params = run.columns;
        let bounds: Vec<i64> = match (form, run.span) {
            (Form::Range, Some(s)) => vec![s.lo, s.hi],
            _ => Vec::new(),
        };
        let want = match run.kind {
            Kind::Insert => 0,
            _ => run.rows as u64,
        };
        let expect = Some((want, Subject::Table(run.rel.clone())));
        self.send(
            move |c| async move {
                let refs: Vec<&(dyn ToSql + Sync)> = params
                    .iter()
                    .map(|p| p as &(dyn ToSql + Sync))
                    .chain(bounds.iter().map(|b| b as &(dyn ToSql + Sync)))
                    .collect();
                c.execute(&stmt, &refs).await
            },
            expect,
        )
        .await
    }

    /// The error to report when `e` happened with requests in flight: the first of theirs,
    /// if one failed (then `e` is only its consequence).
    async fn first_error(&mut self, rel: &RelInfo, e: tokio_postgres::Error) -> ApplyError {
        match self.drain().await {
            Err(first) => first,
            Ok(()) => ApplyError::Statement {
                table: rel.table.display_plain(),
                message: error_text(&e),
                source: Some(e),
            },
        }
    }

    /// Send the script built so far on a session as one simple-query message.
    pub(super) async fn flush_script(&mut self, lane: usize) -> Result<(), ApplyError> {
        let l = &mut self.lanes[lane];
        if l.script_expect.is_empty() {
            return Ok(());
        }
        let script = std::mem::take(&mut l.script);
        let expect = std::mem::take(&mut l.script_expect);
        let c = l.client.clone();
        let fut: Pending = Box::pin(async move {
            use futures_util::TryStreamExt;
            let mut counts = Vec::new();
            let stream = c.simple_query_raw(&script).await.map_err(|e| (0, e))?;
            futures_util::pin_mut!(stream);
            loop {
                match stream.try_next().await {
                    Ok(Some(tokio_postgres::SimpleQueryMessage::CommandComplete(n))) => {
                        counts.push(n)
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => return Ok(counts),
                    Err(e) => return Err((counts.len(), e)),
                }
            }
        });
        self.push(lane, fut, expect, None).await
    }

    /// Send one statement now on the open batch's session, after the script built so far
    /// (see the module docs on ordering), and queue its answer.
    pub(super) async fn send<F, Fut>(&mut self, make: F, expect: Expect) -> Result<(), ApplyError>
    where
        F: FnOnce(Arc<Client>) -> Fut,
        Fut: Future<Output = Result<u64, tokio_postgres::Error>> + Send + 'static,
    {
        self.send_on(self.current(), make, expect, None).await
    }

    /// [`Applier::send`] on a given session, for a request that may end a commit.
    pub(super) async fn send_on<F, Fut>(
        &mut self,
        lane: usize,
        make: F,
        expect: Expect,
        ends_commit: Option<EndsCommit>,
    ) -> Result<(), ApplyError>
    where
        F: FnOnce(Arc<Client>) -> Fut,
        Fut: Future<Output = Result<u64, tokio_postgres::Error>> + Send + 'static,
    {
        self.flush_script(lane).await?;
        let fut = make(self.lanes[lane].client.clone());
        self.push(
            lane,
            Box::pin(async move { fut.await.map(|n| vec![n]).map_err(|e| (0, e)) }),
            vec![expect],
            ends_commit,
        )
        .await
    }

    /// Poll a request once (which writes it to the connection) and queue its answer.
    pub(super) async fn push(
        &mut self,
        lane: usize,
        mut fut: Pending,
        expect: Vec<Expect>,
        ends_commit: Option<EndsCommit>,
    ) -> Result<(), ApplyError> {
        let first_poll = {
            let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
            fut.as_mut().poll(&mut cx)
        };
        let fut = match first_poll {
            Poll::Ready(result) => Box::pin(std::future::ready(result)),
            Poll::Pending => fut,
        };
        let seq = self.lanes[lane].next_seq();
        self.lanes[lane].inflight.push_back(InFlight {
            fut,
            seq,
            expect,
            ends_commit,
        });
        while self.lanes[lane].inflight.len() > MAX_INFLIGHT {
            self.settle_one(lane).await?;
        }
        Ok(())
    }

    /// Read the answer to the oldest request in flight on a session.
    pub(super) async fn settle_one(&mut self, lane: usize) -> Result<(), ApplyError> {
        let Some(f) = self.lanes[lane].inflight.pop_front() else {
            return Ok(());
        };
        let answer = {
            let _waiting = self.lanes[lane].watch.wait_for(f.seq);
            f.fut.await
        };
        let l = &mut self.lanes[lane];
        match answer {
            Ok(counts) => {
                for (n, expect) in counts.iter().zip(&f.expect) {
                    if let Some((want, subject)) = expect
                        && n < want
                    {
                        l.missing += want - n;
                        tracing::warn!(table = %subject.name(), missing = want - n,
                            "rows to update or delete were not found on the target");
                    }
                }
                if let Some(EndsCommit {
                    mut totals,
                    answers_positions,
                }) = f.ends_commit
                {
                    if answers_positions && let [insert, flushed] = counts[..] {
                        totals.target_lsn = Lsn(insert);
                        totals.target_flushed = Lsn(flushed);
                    }
                    totals.missing_rows = std::mem::take(&mut l.missing);
                    l.commits -= 1;
                    // The next batch may have begun behind it on this session.
                    l.open = self.lane == Some(lane)
                        || self.sealed.as_ref().is_some_and(|b| b.lane == lane);
                    self.done.push(totals);
                }
                Ok(())
            }
            Err((at, e)) => {
                let table = f
                    .expect
                    .get(at)
                    .and_then(|x| x.as_ref())
                    .map(|(_, subject)| subject.name())
                    .unwrap_or_else(|| "the target".into());
                l.inflight.clear();
                Err(ApplyError::Statement {
                    table,
                    message: error_text(&e),
                    source: Some(e),
                })
            }
        }
    }

    /// Read every answer, the session of the last commit sent first (its batch is the
    /// older one, so its error is the one to report).
    pub(super) async fn drain(&mut self) -> Result<(), ApplyError> {
        let n = self.lanes.len();
        for i in 0..n {
            let lane = (self.last_lane + i) % n;
            self.flush_script(lane).await?;
            while !self.lanes[lane].inflight.is_empty() {
                self.settle_one(lane).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span_of(keys: &[&str]) -> Option<Span> {
        let start = Some(Span {
            at: 0,
            lo: i64::MAX,
            hi: i64::MIN,
        });
        keys.iter().fold(start, |s, k| {
            s.and_then(|s| s.widen(&[Some(Bytes::copy_from_slice(k.as_bytes()))]))
        })
    }

    #[test]
    fn runs_take_the_range_form_only_when_their_keys_are_dense() {
        let keys: Vec<String> = (1000..1064).map(|k| k.to_string()).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let s = span_of(&keys).unwrap();
        assert_eq!((s.lo, s.hi), (1000, 1063));
        assert_eq!(Span::form(Some(s), 64), Form::Range);
        // Every other key: still twice as dense as the limit.
        assert_eq!(Span::form(span_of(&["-10", "116"]), 64), Form::Range);
        assert_eq!(Span::form(span_of(&["-10", "118"]), 64), Form::Rows);
        // Too few rows, or keys far apart (no overflow at the ends of int8).
        assert_eq!(Span::form(Some(s), RANGE_MIN_ROWS - 1), Form::Rows);
        let ends = span_of(&["-9223372036854775808", "9223372036854775807"]);
        assert_eq!(Span::form(ends, 1000), Form::Rows);
        // A key that is not an integer (or NULL) ends the range form for the run.
        assert!(span_of(&["1", "x"]).is_none());
        assert!(Span::form(None, 1000) == Form::Rows);
        let null = span_of(&["1"]).unwrap().widen(&[None]);
        assert!(null.is_none());
    }
}
