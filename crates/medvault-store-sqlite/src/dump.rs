//! Dumping and loading rows in the backend-neutral form of `medvault_store::dump`.

use medvault_store::StoreError;
use medvault_store::dump::{Cell, Sink, Table};
use rusqlite::Connection;
use rusqlite::types::{Value, ValueRef};

use crate::conn::backend;
use crate::sql;

fn cell(v: ValueRef<'_>, table: &Table, col: usize) -> Result<Cell, StoreError> {
    Ok(match v {
        ValueRef::Null => Cell::Null,
        ValueRef::Integer(n) => Cell::Int(n),
        ValueRef::Text(t) => Cell::Text(String::from_utf8(t.to_vec()).map_err(|_| {
            StoreError::Backend(format!("{}: text is not UTF-8", table.name).into())
        })?),
        ValueRef::Blob(b) => Cell::Bytes(b.to_vec()),
        ValueRef::Real(_) => {
            return Err(StoreError::Backend(
                format!(
                    "{}.{}: unexpected real number",
                    table.name, table.columns[col].0
                )
                .into(),
            ));
        }
    })
}

/// Reads every table in one read transaction (one WAL snapshot).
pub(crate) fn dump(
    c: &Connection,
    tables: &'static [Table],
    sink: &mut Sink<'_>,
) -> Result<(), StoreError> {
    c.execute_batch("BEGIN").map_err(backend)?;
    let result = (|| {
        for table in tables {
            // A bulk load's staged index rows are index rows: the dump has them too (a
            // restore puts them straight into `idx`).
            let select = if table.name == "idx" {
                "SELECT c.rtype, c.id, i.value
                 FROM (SELECT value, rid FROM idx UNION SELECT value, rid FROM idx_staged) i
                 JOIN current c ON c.rid = i.rid
                 ORDER BY 1, 2, 3"
                    .to_owned()
            } else {
                table.select()
            };
            let mut stmt = c.prepare(&select).map_err(backend)?;
            let mut rows = stmt.query([]).map_err(backend)?;
            while let Some(r) = rows.next().map_err(backend)? {
                let mut cells = Vec::with_capacity(table.columns.len());
                for i in 0..table.columns.len() {
                    cells.push(cell(r.get_ref(i).map_err(backend)?, table, i)?);
                }
                // What a restore would refuse is refused now, while the source is at hand.
                table
                    .check(&cells)
                    .map_err(|m| StoreError::Backend(m.into()))?;
                sink(table, cells)?;
            }
        }
        Ok(())
    })();
    let _ = c.execute_batch("COMMIT");
    result
}

fn value(cell: &Cell) -> Value {
    match cell {
        Cell::Null => Value::Null,
        Cell::Int(n) => Value::Integer(*n),
        Cell::Text(t) => Value::Text(t.clone()),
        Cell::Bytes(b) => Value::Blob(b.clone()),
    }
}

/// Inserts dumped rows into `table` within the writer's transaction.
pub(crate) fn load(c: &Connection, table: &Table, rows: &[Vec<Cell>]) -> Result<(), StoreError> {
    let cols: Vec<&str> = table.columns.iter().map(|(c, _)| *c).collect();
    let marks: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
    let sql = match table.name {
        // The target was just created with its own schema rows; the dump's agree (same version).
        "meta" => "INSERT INTO meta (k, v) VALUES (?1, ?2)
                   ON CONFLICT (k) DO UPDATE SET v = excluded.v"
            .to_owned(),
        // The run is the leaf's (the dump holds tag and leaf, as every backend does).
        "access_patients" => {
            "INSERT INTO access_patients (run, tag, leaf) VALUES (?2 >> 12, ?1, ?2)".to_owned()
        }
        "idx" => "INSERT INTO idx (value, rid) SELECT ?3, rid FROM current
                  WHERE rtype = ?1 AND id = ?2"
            .to_owned(),
        name => format!(
            "INSERT INTO {name} ({}) VALUES ({})",
            cols.join(", "),
            marks.join(", ")
        ),
    };
    let mut ins = c.prepare_cached(&sql).map_err(backend)?;
    for row in rows {
        table
            .check(row)
            .map_err(|m| StoreError::Backend(m.into()))?;
        let values: Vec<Value> = row.iter().map(value).collect();
        let n = ins
            .execute(rusqlite::params_from_iter(values.iter()))
            .map_err(backend)?;
        if table.name == "idx" {
            if n != 1 {
                return Err(StoreError::Backend(
                    "an index value names a resource that is not in the dump".into(),
                ));
            }
            // SQLite keeps each resource's own index values beside it, to remove them on
            // update (appended in Rust: SQLite's || operator works on text).
            let own = sql::one(
                c,
                "SELECT index_values FROM current WHERE rtype = ?1 AND id = ?2",
                [&values[0], &values[1]],
                |r| r.opt_bytes(0),
            )?;
            let mut kept = own
                .ok_or_else(|| backend(rusqlite::Error::QueryReturnedNoRows))?
                .unwrap_or_default();
            if let Value::Blob(b) = &values[2] {
                kept.extend_from_slice(b);
            }
            sql::exec(
                c,
                "UPDATE current SET index_values = ?3 WHERE rtype = ?1 AND id = ?2",
                rusqlite::params![&values[0], &values[1], kept],
            )?;
        }
    }
    Ok(())
}
