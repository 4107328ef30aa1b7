//! The admin API's changes to the catalog in force (issue 7): customers and accounts created,
//! updated and closed. An edit gives the whole new catalog's TOML, which is then installed like
//! any catalog change (`durable::Catalogs::install`): parsed and validated as a file is, checked
//! against the one in force (`check_change`), stored, journaled. So the API knows exactly the
//! file's keys and rules, and an account made through it is in the catalog a reload or
//! `GET /v1/catalog` shows, not in a second store beside it.
//!
//! Bodies are JSON objects with the catalog file's keys (`[[customers]]`, `[[accounts]]`);
//! updates are JSON merge patches (RFC 7396: a key replaces, `null` removes). Cost: the whole
//! catalog is written per edit, O(catalog) — fine for thousands of accounts, not for bulk
//! provisioning of millions (load a catalog with `PUT /v1/catalog` for that).

use serde_json::Value;

use super::raw::{RawAccount, RawCustomer};
use super::Catalog;

/// One change, in the catalog file's keys.
#[derive(Clone, Copy, Debug)]
pub enum Edit<'a> {
    AddCustomer(&'a Value),
    UpdateCustomer { id: &'a str, patch: &'a Value },
    AddAccount(&'a Value),
    UpdateAccount { index: usize, patch: &'a Value },
    CloseAccount { index: usize },
}

/// Why an edit could not even be written (the new catalog's own problems come from
/// `from_toml` and `check_change` when it is installed).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
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
}

impl EditError {
    /// The field an HTTP error names.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Body(_) => "body",
            Self::NoCustomer(_) => "customer",
            Self::NoAccount(_) => "account",
            Self::Fixed { field, .. } => field,
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

fn to_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("catalog structs serialize to JSON")
}

impl Catalog {
    /// The TOML of this catalog with `edit` made. Not validated here: install it.
    pub fn edited(&self, edit: Edit<'_>) -> Result<String, EditError> {
        let mut raw = self.to_raw();
        match edit {
            Edit::AddCustomer(body) => {
                object(body)?;
                raw.customers.push(from_json::<RawCustomer>(body.clone())?);
            }
            Edit::UpdateCustomer { id, patch } => {
                object(patch)?;
                if patch.get("id").is_some_and(|v| v.as_str() != Some(id)) {
                    return Err(EditError::Fixed { field: "id", why: "accounts refer to customers by id" });
                }
                let i = raw
                    .customers
                    .iter()
                    .position(|c| c.id == id)
                    .ok_or_else(|| EditError::NoCustomer(id.to_owned()))?;
                let mut v = to_json(&raw.customers[i]);
                merge(&mut v, patch);
                raw.customers[i] = from_json(v)?;
            }
            Edit::AddAccount(body) => {
                object(body)?;
                raw.accounts.push(from_json::<RawAccount>(body.clone())?);
            }
            Edit::UpdateAccount { index, patch } => {
                object(patch)?;
                if patch.get("closed").is_some() {
                    return Err(EditError::Fixed {
                        field: "closed",
                        why: "close an account with POST …/close",
                    });
                }
                let a = raw.accounts.get_mut(index).ok_or(EditError::NoAccount(index))?;
                let mut v = to_json(&*a);
                merge(&mut v, patch);
                *a = from_json(v)?;
            }
            Edit::CloseAccount { index } => {
                raw.accounts.get_mut(index).ok_or(EditError::NoAccount(index))?.closed = true;
            }
        }
        Ok(toml::to_string(&raw).expect("a catalog always serializes to TOML"))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::catalog::{check_change, CatalogError, Problem};

    fn install(old: &Catalog, text: &str) -> Result<Catalog, CatalogError> {
        let new = Catalog::from_toml("admin API", text)?;
        check_change("admin API", old, &old.packages(), &new, &new.packages())?;
        Ok(new)
    }

    #[test]
    fn a_customer_and_an_account_are_added_at_the_end() {
        let old = Catalog::demo();
        let plan = old.plans[0].id.clone();
        let text = old
            .edited(Edit::AddCustomer(
                &json!({ "id": "acme", "name": "ACME", "email": "billing@acme.example", "plan": plan }),
            ))
            .unwrap();
        let with_customer = install(&old, &text).unwrap();
        let text = with_customer
            .edited(Edit::AddAccount(&json!({
                "customer": "acme", "subscription_ids": ["e164:491709999999"], "funding": "prepaid", "balance": "12.50"
            })))
            .unwrap();
        let new = install(&with_customer, &text).unwrap();
        assert_eq!(new.accounts.len(), old.accounts.len() + 1);
        let a = new.accounts.last().unwrap();
        assert_eq!((a.customer.as_str(), a.balance.to_string().as_str()), ("acme", "12.50"));
    }

    #[test]
    fn bad_bodies_name_the_key() {
        let c = Catalog::demo();
        let e =
            c.edited(Edit::AddAccount(&json!({ "customer": "x", "funding": "prepaid", "colour": "red" })));
        assert!(matches!(&e, Err(EditError::Body(m)) if m.contains("colour")), "{e:?}");
        let e = c.edited(Edit::AddAccount(&json!({ "customer": "x" })));
        assert!(matches!(&e, Err(EditError::Body(m)) if m.contains("funding")), "{e:?}");
        assert_eq!(c.edited(Edit::AddCustomer(&json!([1]))).unwrap_err().field(), "body");
        let id = c.customers[0].id.clone();
        let e = c.edited(Edit::UpdateCustomer { id: &id, patch: &json!({ "id": "other" }) }).unwrap_err();
        assert_eq!(e.field(), "id");
        assert_eq!(c.edited(Edit::CloseAccount { index: 999 }).unwrap_err(), EditError::NoAccount(999));
        // A new account with a subscription id already in use: the file's rule, from from_toml.
        let taken = c.accounts[0].subscription_ids[0].to_string();
        let text = c
            .edited(Edit::AddAccount(&json!({ "customer": c.accounts[0].customer, "subscription_ids": [taken], "funding": "prepaid" })))
            .unwrap();
        let e = install(&c, &text).unwrap_err().to_string();
        assert!(e.contains("accounts[") && e.contains("already on"), "{e}");
    }

    #[test]
    fn updates_merge_and_opening_values_are_refused() {
        let c = Catalog::demo();
        let id = c.customers[0].id.clone();
        let text = c
            .edited(Edit::UpdateCustomer { id: &id, patch: &json!({ "email": "new@example.org" }) })
            .unwrap();
        let new = install(&c, &text).unwrap();
        assert_eq!(new.customers[0].email, "new@example.org");
        assert_eq!(new.customers[0].name, c.customers[0].name, "keys not in the patch stay");
        let text = c.edited(Edit::UpdateAccount { index: 0, patch: &json!({ "balance": "99" }) }).unwrap();
        match install(&c, &text) {
            Err(CatalogError::Invalid {
                entry,
                problem: Problem::OpeningValueChanged { field: "balance", .. },
                ..
            }) => {
                assert_eq!(entry, "accounts[0]")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_closed_account_stays_closed() {
        let c = Catalog::demo();
        let closed = install(&c, &c.edited(Edit::CloseAccount { index: 1 }).unwrap()).unwrap();
        assert!(closed.accounts[1].closed && !closed.accounts[0].closed);
        let e =
            closed.edited(Edit::UpdateAccount { index: 1, patch: &json!({ "closed": false }) }).unwrap_err();
        assert_eq!(e.field(), "closed");
        // Reopening through a whole catalog is refused by check_change.
        let e = install(&closed, &c.to_toml()).unwrap_err();
        assert!(matches!(e, CatalogError::Invalid { problem: Problem::Reopened, .. }), "{e}");
    }
}
