//! Group commit's SQL, shared by the event store's writer and the ledger's: one immediate
//! transaction per batch, applied whole under one savepoint; if an item fails, that is undone
//! and the batch applied again with each item in a savepoint of its own, so the item that fails
//! is undone alone.
//! The statements are prepared once per connection and kept (rusqlite's own transactions and
//! savepoints parse their SQL anew each time, which on a busy writer was a noticeable share of
//! its time).

use rusqlite::Connection;

/// Runs one of the fixed statements.
pub(crate) fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// A batch's write transaction: rolled back when dropped uncommitted.
pub(crate) struct Tx<'c>(pub(crate) &'c Connection);

impl<'c> Tx<'c> {
    /// `BEGIN IMMEDIATE`: waits (up to the busy timeout) for any other writer of the file.
    pub(crate) fn begin(conn: &'c Connection) -> rusqlite::Result<Tx<'c>> {
        exec(conn, "BEGIN IMMEDIATE")?;
        Ok(Tx(conn))
    }

    pub(crate) fn commit(self) -> rusqlite::Result<()> {
        let result = exec(self.0, "COMMIT");
        if result.is_ok() {
            std::mem::forget(self);
        }
        result
    }

    /// Runs one item of the batch in a savepoint: an item that fails is undone and its error
    /// returned inside `Ok`. `Err` means the savepoint itself could not be taken, undone or
    /// released: the transaction is in an unknown state and none of it may commit.
    pub(crate) fn item<T, E>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, E>,
    ) -> rusqlite::Result<Result<T, E>> {
        exec(self.0, "SAVEPOINT item")?;
        let result = f(self.0);
        if result.is_err() {
            exec(self.0, "ROLLBACK TO item")?;
        }
        exec(self.0, "RELEASE item")?;
        Ok(result)
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if !self.0.is_autocommit() {
            let _ = exec(self.0, "ROLLBACK");
        }
    }
}
