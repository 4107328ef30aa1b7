//! The admin API's changes to the catalog in force (issue 7): customers and accounts created,
//! updated and closed. An edit is made on the catalog in memory, then the whole result is
//! validated as a file is (`Catalog::validate`) and checked against the one in force
//! (`check_change`) before `durable::Catalogs::edit` journals the edit itself (a small record,
//! `cc::TAG_CATALOG_EDIT`) and installs the result. So the API knows exactly the file's keys
//! and rules, an account made through it is in the catalog a reload or `GET /v1/catalog`
//! shows, and recovery makes the same edit again from the record.
//!
//! Bodies are JSON objects with the catalog file's keys (`[[customers]]`, `[[accounts]]`);
//! updates are JSON merge patches (RFC 7396: a key replaces, `null` removes). Cost: a copy of
//! the catalog and a validation of all of it per edit, in memory, O(catalog); no file.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::raw::{RawAccount, RawCustomer};
use super::{Catalog, CatalogError};

/// One change, in the catalog file's keys. Serialized (JSON) into its journal record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Edit {
    AddCustomer { body: Value },
    UpdateCustomer { id: String, patch: Value },
    AddAccount { body: Value },
    UpdateAccount { index: usize, patch: Value },
    CloseAccount { index: usize },
}

/// Why an edit was not made.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// The body does not fit the catalog's keys; the message names the key.
    #[error("{0}")]
    Body(String),
    #[error("no customer {0:?}")]
    NoCustomer(String),
    #[error("no account {0}")]
    NoAccount(usize),
    #[error("{field} cannot be changed: {why}")]
    Fixed { field: &'static str, why: &'static str },
    /// The edited catalog breaks a rule of the file (names the entry).
    #[error(transparent)]
    Invalid(#[from] CatalogError),
}

impl EditError {
    /// The field an HTTP error names.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Body(_) => "body",
            Self::NoCustomer(_) => "customer",
            Self::NoAccount(_) => "account",
            Self::Fixed { field, .. } => field,
            Self::Invalid(_) => "catalog",
        }
    }
}

/// RFC 7396 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    let Value::Object(map) = target else { return };
    for (k, v) in patch {
        if v.is_null() {
            map.remove(k);
        } else {
            merge(map.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn object(v: &Value) -> Result<(), EditError> {
    if v.is_object() {
        Ok(())
    } else {
        Err(EditError::Body("the body must be a JSON object with the catalog's keys".into()))
    }
}

fn from_json<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, EditError> {
    serde_json::from_value(v).map_err(|e| EditError::Body(e.to_string()))
}

fn to_json<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("catalog structs serialize to JSON")
}

impl Catalog {
    /// This catalog with `edit` made, validated as a file would be (`origin` starts the
    /// errors). Not checked against the catalog in force: `check_change` does that.
    pub fn apply(&self, origin: &str, edit: &Edit) -> Result<Self, EditError> {
        let invalid = |(entry, problem)| {
            EditError::Invalid(CatalogError::Invalid { origin: origin.to_owned(), entry, problem })
        };
        let mut next = self.clone();
        match edit {
            Edit::AddCustomer { body } => {
                object(body)?;
                let raw = from_json::<RawCustomer>(body.clone())?;
                next.customers.push(super::load::customer(self.customers.len(), raw).map_err(invalid)?);
            }
            Edit::UpdateCustomer { id, patch } => {
                object(patch)?;
                if patch.get("id").is_some_and(|v| v.as_str() != Some(id)) {
                    return Err(EditError::Fixed { field: "id", why: "accounts refer to customers by id" });
                }
                let i = self
                    .customers
                    .iter()
                    .position(|c| c.id == *id)
                    .ok_or_else(|| EditError::NoCustomer(id.clone()))?;
                let mut v = to_json(&super::save::customer(&self.customers[i]));
                merge(&mut v, patch);
                next.customers[i] = super::load::customer(i, from_json(v)?).map_err(invalid)?;
            }
            Edit::AddAccount { body } => {
                object(body)?;
                let raw = from_json::<RawAccount>(body.clone())?;
                next.accounts.push(super::load::account(self.accounts.len(), raw).map_err(invalid)?);
            }
            Edit::UpdateAccount { index, patch } => {
                object(patch)?;
                if patch.get("closed").is_some() {
                    return Err(EditError::Fixed {
                        field: "closed",
                        why: "close an account with POST …/close",
                    });
                }
                let a = self.accounts.get(*index).ok_or(EditError::NoAccount(*index))?;
                let mut v = to_json(&super::save::account(a));
                merge(&mut v, patch);
                next.accounts[*index] = super::load::account(*index, from_json(v)?).map_err(invalid)?;
            }
            Edit::CloseAccount { index } => {
                next.accounts.get_mut(*index).ok_or(EditError::NoAccount(*index))?.closed = true;
            }
        }
        next.validate(origin)?;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::catalog::{check_change, Problem};

    /// `apply`, then `check_change` against the catalog before, as `durable::Catalogs::edit`.
    fn edit(old: &Catalog, edit: Edit) -> Result<Catalog, EditError> {
        let new = old.apply("admin API", &edit)?;
        check_change("admin API", old, &old.packages(), &new, &new.packages())?;
        Ok(new)
    }

    #[test]
    fn a_customer_and_an_account_are_added_at_the_end() {
        let old = Catalog::demo();
        let plan = old.plans[0].id.clone();
        let body = json!({ "id": "acme", "name": "ACME", "email": "billing@acme.example", "plan": plan });
        let with_customer = edit(&old, Edit::AddCustomer { body }).unwrap();
        let body = json!({
            "customer": "acme", "subscription_ids": ["e164:491709999999"], "funding": "prepaid", "balance": "12.50"
        });
        let new = edit(&with_customer, Edit::AddAccount { body }).unwrap();
        assert_eq!(new.accounts.len(), old.accounts.len() + 1);
        let a = new.accounts.last().unwrap();
        assert_eq!((a.customer.as_str(), a.balance.to_string().as_str()), ("acme", "12.50"));
        // The edited catalog is what the file would give (it round-trips through TOML).
        assert_eq!(Catalog::from_toml("x", &new.to_toml()).unwrap(), new);
        // Edits are journaled as JSON and read back the same.
        let e = Edit::UpdateAccount { index: 5, patch: json!({ "card": null }) };
        assert_eq!(serde_json::from_str::<Edit>(&serde_json::to_string(&e).unwrap()).unwrap(), e);
    }

    #[test]
    fn bad_bodies_name_the_key() {
        let c = Catalog::demo();
        let e = c.apply(
            "a",
            &Edit::AddAccount { body: json!({ "customer": "x", "funding": "prepaid", "colour": "red" }) },
        );
        assert!(matches!(&e, Err(EditError::Body(m)) if m.contains("colour")), "{e:?}");
        let e = c.apply("a", &Edit::AddAccount { body: json!({ "customer": "x" }) });
        assert!(matches!(&e, Err(EditError::Body(m)) if m.contains("funding")), "{e:?}");
        assert_eq!(c.apply("a", &Edit::AddCustomer { body: json!([1]) }).unwrap_err().field(), "body");
        let id = c.customers[0].id.clone();
        let e = c.apply("a", &Edit::UpdateCustomer { id, patch: json!({ "id": "other" }) }).unwrap_err();
        assert_eq!(e.field(), "id");
        assert!(matches!(c.apply("a", &Edit::CloseAccount { index: 999 }), Err(EditError::NoAccount(999))));
        // A subscription id already in use, an unknown customer: the file's rules, naming the entry.
        let taken = c.accounts[0].subscription_ids[0].to_string();
        let body =
            json!({ "customer": c.accounts[0].customer, "subscription_ids": [taken], "funding": "prepaid" });
        let e = c.apply("a", &Edit::AddAccount { body }).unwrap_err().to_string();
        assert!(e.contains("accounts[5]") && e.contains("already on"), "{e}");
        let body = json!({ "customer": "nobody", "funding": "prepaid" });
        let e = c.apply("a", &Edit::AddAccount { body }).unwrap_err();
        assert_eq!(e.field(), "catalog");
        assert!(e.to_string().contains("nobody"), "{e}");
    }

    #[test]
    fn updates_merge_and_opening_values_are_refused() {
        let c = Catalog::demo();
        let id = c.customers[0].id.clone();
        let new =
            edit(&c, Edit::UpdateCustomer { id, patch: json!({ "email": "new@example.org" }) }).unwrap();
        assert_eq!(new.customers[0].email, "new@example.org");
        assert_eq!(new.customers[0].name, c.customers[0].name, "keys not in the patch stay");
        match edit(&c, Edit::UpdateAccount { index: 0, patch: json!({ "balance": "99" }) }) {
            Err(EditError::Invalid(CatalogError::Invalid {
                entry,
                problem: Problem::OpeningValueChanged { field: "balance", .. },
                ..
            })) => assert_eq!(entry, "accounts[0]"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_closed_account_stays_closed() {
        let c = Catalog::demo();
        let closed = edit(&c, Edit::CloseAccount { index: 1 }).unwrap();
        assert!(closed.accounts[1].closed && !closed.accounts[0].closed);
        let e = closed
            .apply("a", &Edit::UpdateAccount { index: 1, patch: json!({ "closed": false }) })
            .unwrap_err();
        assert_eq!(e.field(), "closed");
        // Reopening through a whole catalog is refused by check_change.
        let e = check_change("f", &closed, &closed.packages(), &c, &c.packages()).unwrap_err();
        assert!(matches!(e, CatalogError::Invalid { problem: Problem::Reopened, .. }), "{e}");
    }
}
