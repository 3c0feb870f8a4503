//! Dumping and loading rows in the backend-neutral form of `medvault_store::dump`.

use medvault_store::StoreError;
use medvault_store::dump::{Cell, Kind, Sink, Table};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::conn::{Conn, pg};

/// Rows fetched per round trip while dumping.
const FETCH: usize = 1000;
/// Bind parameters one INSERT carries at most (PostgreSQL allows 65 535).
const MAX_PARAMS: usize = 30_000;

fn cells(r: &Row, table: &Table) -> Result<Vec<Cell>, StoreError> {
    let mut out = Vec::with_capacity(table.columns.len());
    for (i, (_, kind)) in table.columns.iter().enumerate() {
        let c = match kind {
            Kind::Int => r.try_get::<_, Option<i64>>(i).map_err(pg)?.map(Cell::Int),
            Kind::Bool => r
                .try_get::<_, Option<bool>>(i)
                .map_err(pg)?
                .map(|b| Cell::Int(i64::from(b))),
            Kind::Text => r
                .try_get::<_, Option<String>>(i)
                .map_err(pg)?
                .map(Cell::Text),
            Kind::Bytes => r
                .try_get::<_, Option<Vec<u8>>>(i)
                .map_err(pg)?
                .map(Cell::Bytes),
        };
        out.push(c.unwrap_or(Cell::Null));
    }
    Ok(out)
}

/// Reads every table in one REPEATABLE READ transaction (one snapshot), through a cursor so
/// that large tables stream.
pub(crate) fn dump(
    c: &mut Conn,
    tables: &'static [Table],
    sink: &mut Sink<'_>,
) -> Result<(), StoreError> {
    c.batch("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")?;
    let result = (|| {
        for table in tables {
            // One cursor name per table: the FETCH statement is prepared (and cached) with the
            // cursor's column types.
            let cursor = format!("dump_{}", table.name);
            c.batch(&format!(
                "DECLARE {cursor} NO SCROLL CURSOR FOR {}",
                table.select()
            ))?;
            loop {
                let rows = c.query(&format!("FETCH {FETCH} FROM {cursor}"), &[])?;
                for r in &rows {
                    let row = cells(r, table)?;
                    table
                        .check(&row)
                        .map_err(|m| StoreError::Backend(m.into()))?;
                    sink(table, row)?;
                }
                if rows.len() < FETCH {
                    break;
                }
            }
            c.batch(&format!("CLOSE {cursor}"))?;
        }
        Ok(())
    })();
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    let _ = c.batch(end);
    result
}

/// A cell as a typed parameter for its column.
fn param(cell: &Cell, kind: Kind) -> Result<Box<dyn ToSql + Sync>, StoreError> {
    Ok(match (kind, cell) {
        (Kind::Int, Cell::Null) => Box::new(None::<i64>),
        (Kind::Bool, Cell::Null) => Box::new(None::<bool>),
        (Kind::Text, Cell::Null) => Box::new(None::<String>),
        (Kind::Bytes, Cell::Null) => Box::new(None::<Vec<u8>>),
        (Kind::Int, Cell::Int(n)) => Box::new(*n),
        (Kind::Bool, Cell::Int(n)) => Box::new(*n != 0),
        (Kind::Text, Cell::Text(t)) => Box::new(t.clone()),
        (Kind::Bytes, Cell::Bytes(b)) => Box::new(b.clone()),
        _ => {
            return Err(StoreError::Backend(
                "a dumped value of the wrong type".into(),
            ));
        }
    })
}

fn sql_type(kind: Kind) -> &'static str {
    match kind {
        Kind::Int => "bigint",
        Kind::Bool => "boolean",
        Kind::Text => "text",
        Kind::Bytes => "bytea",
    }
}

/// Inserts dumped rows into `table`, many rows per statement.
pub(crate) fn load(c: &mut Conn, table: &Table, rows: &[Vec<Cell>]) -> Result<(), StoreError> {
    let width = table.columns.len();
    for chunk in rows.chunks((MAX_PARAMS / width).max(1)) {
        let mut params: Vec<Box<dyn ToSql + Sync>> = Vec::with_capacity(chunk.len() * width);
        let mut tuples = Vec::with_capacity(chunk.len());
        for row in chunk {
            table
                .check(row)
                .map_err(|m| StoreError::Backend(m.into()))?;
            let mut marks = Vec::with_capacity(width);
            for (cell, (_, kind)) in row.iter().zip(table.columns) {
                params.push(param(cell, *kind)?);
                marks.push(format!("${}::{}", params.len(), sql_type(*kind)));
            }
            tuples.push(format!("({})", marks.join(", ")));
        }
        let cols: Vec<&str> = table.columns.iter().map(|(c, _)| *c).collect();
        let values = tuples.join(", ");
        let sql = match table.name {
            "meta" => format!(
                "INSERT INTO meta (k, v) VALUES {values}
                 ON CONFLICT (k) DO UPDATE SET v = excluded.v"
            ),
            "idx" => format!(
                "INSERT INTO idx (value, rid)
                 SELECT v.value, c.rid FROM (VALUES {values}) AS v (rtype, id, value)
                 JOIN current c ON c.rtype = v.rtype AND c.id = v.id"
            ),
            name => format!("INSERT INTO {name} ({}) VALUES {values}", cols.join(", ")),
        };
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(AsRef::as_ref).collect();
        let n = c.exec(&sql, &refs)?;
        if table.name == "idx" && n != chunk.len() as u64 {
            return Err(StoreError::Backend(
                "an index value names a resource that is not in the dump".into(),
            ));
        }
    }
    Ok(())
}
