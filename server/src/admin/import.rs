//! `account importUsers`: bulk accounts from a CSV file of `user,host,password` rows
//! (MongooseIM's format). The password column may instead hold precomputed SCRAM
//! credentials in MongooseIM's `==MULTI_SCRAM==,...` form (quoted, it contains
//! commas), so a million load-test accounts import without a million PBKDF2 runs.
//!
//! Plain passwords are hashed on every CPU in parallel; rows are inserted in one
//! transaction per batch.

use starling_shard::db::StoreError;
use starling_wire::jid::BareJid;

use super::schema::{Admin, ImportPayload};
use crate::store::AccountKeys;

/// What happened to one row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Existing,
    NotAllowed,
    InvalidJid,
    EmptyPassword,
    InvalidRecord,
}

/// A row ready to store, or why it is not.
enum Row {
    Ready { jid: BareJid, secret: Secret },
    Rejected { outcome: Outcome, text: String },
}

enum Secret {
    Password(String),
    Keys(Box<AccountKeys>),
}

/// Rows hashed and inserted per batch.
const BATCH_ROWS: usize = 10_000;

pub fn import(admin: &Admin, text: &str) -> Result<ImportPayload, StoreError> {
    let mut payload = ImportPayload::completed();
    let rows: Vec<Row> =
        text.lines().filter(|line| !line.trim().is_empty()).map(|line| classify(admin, line)).collect();
    let mut ready = Vec::new();
    for row in rows {
        match row {
            Row::Rejected { outcome, text } => payload.record(outcome, text),
            Row::Ready { jid, secret } => ready.push((jid, secret)),
        }
    }
    for batch in ready.chunks(BATCH_ROWS) {
        let keyed = derive_keys(admin, batch);
        let created = admin.storage.lock().unwrap_or_else(|p| p.into_inner()).register_many(&keyed)?;
        for ((jid, _), created) in keyed.iter().zip(created) {
            payload.record(if created { Outcome::Created } else { Outcome::Existing }, jid.to_string());
        }
    }
    Ok(payload)
}

fn classify(admin: &Admin, line: &str) -> Row {
    let Some(fields) = split_csv(line) else {
        return Row::Rejected { outcome: Outcome::InvalidRecord, text: line.to_owned() };
    };
    let [user, host, password] = fields.as_slice() else {
        return Row::Rejected { outcome: Outcome::InvalidRecord, text: fields.join(",") };
    };
    let Ok(jid) = BareJid::new(Some(user), host) else {
        return Row::Rejected { outcome: Outcome::InvalidJid, text: fields.join(",") };
    };
    if !admin.hosts.iter().any(|h| h == jid.domain()) {
        return Row::Rejected { outcome: Outcome::NotAllowed, text: jid.to_string() };
    }
    if password.is_empty() {
        return Row::Rejected { outcome: Outcome::EmptyPassword, text: jid.to_string() };
    }
    let secret = match AccountKeys::from_mongooseim(password) {
        Some(keys) => Secret::Keys(Box::new(keys)),
        None if password.starts_with("==MULTI_SCRAM==") => {
            return Row::Rejected { outcome: Outcome::InvalidRecord, text: fields.join(",") }
        }
        None => Secret::Password(password.clone()),
    };
    Row::Ready { jid, secret }
}

/// Runs PBKDF2 for plain-password rows on every available CPU.
fn derive_keys(admin: &Admin, rows: &[(BareJid, Secret)]) -> Vec<(BareJid, AccountKeys)> {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let chunk = rows.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = rows
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|(jid, secret)| {
                            let keys = match secret {
                                Secret::Keys(keys) => (**keys).clone(),
                                Secret::Password(password) => {
                                    AccountKeys::from_password(password, admin.scram_iterations)
                                }
                            };
                            (jid.clone(), keys)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        // Invariant: the workers only compute; they do not panic on any row.
        handles.into_iter().flat_map(|h| h.join().expect("key derivation")).collect()
    })
}

/// Splits one CSV record: commas separate fields; a field in double quotes may hold
/// commas, and `""` inside it is a quote. `None` for an unterminated quote.
fn split_csv(line: &str) -> Option<Vec<String>> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', false) if field.is_empty() => quoted = true,
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            ('"', true) => quoted = false,
            (',', false) => fields.push(std::mem::take(&mut field)),
            (c, _) => field.push(c),
        }
    }
    if quoted {
        return None;
    }
    fields.push(field);
    Some(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Quoted fields may contain commas and doubled quotes.
    #[test]
    fn splits_csv_records() {
        assert_eq!(split_csv("a,b,c").unwrap(), vec!["a", "b", "c"]);
        assert_eq!(split_csv("a,\"x,y\",\"q\"\"q\"").unwrap(), vec!["a", "x,y", "q\"q"]);
        assert_eq!(split_csv(",localhost,p\r").unwrap(), vec!["", "localhost", "p"]);
        assert!(split_csv("a,\"open").is_none());
    }
}
