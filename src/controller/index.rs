//! An index of cached pods or services by the uid of the TFJob that controls them (pure), so
//! a reconcile finds a job's objects without scanning every cached object. A re-list updates
//! it in place, as it does the store (`observe::owned_stream`).

use std::collections::{BTreeSet, HashMap};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::names;

/// Namespace and name of a cached object.
pub type Key = (String, String);

/// The TFJob that controls objects: its namespace and name.
pub type Owner = (String, String);

/// A job and the names of the objects it controls, which are in its namespace (an owner
/// reference names an owner in the object's own namespace).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Owned {
    owner: Owner,
    names: BTreeSet<Box<str>>,
}

/// Controller uid -> the job and the keys of the objects it controls.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OwnerIndex {
    by_owner: HashMap<String, Owned>,
}

/// The controlling TFJob's uid and (namespace, name), and the object's key.
fn entry(meta: &ObjectMeta) -> Option<(&str, Owner, Key)> {
    let owner = names::tfjob_controller(meta)?;
    let ns = meta.namespace.clone()?;
    Some((owner.uid.as_str(), (ns.clone(), owner.name.clone()), (ns, meta.name.clone()?)))
}

impl OwnerIndex {
    /// An object was added or changed.
    pub fn applied(&mut self, meta: &ObjectMeta) {
        if let Some((uid, owner, k)) = entry(meta) {
            let owned = self
                .by_owner
                .entry(uid.to_string())
                .or_insert_with(|| Owned { owner, names: BTreeSet::new() });
            owned.names.insert(k.1.into_boxed_str());
        }
    }

    /// An object was deleted.
    pub fn deleted(&mut self, meta: &ObjectMeta) {
        if let Some((uid, _, k)) = entry(meta)
            && let Some(owned) = self.by_owner.get_mut(uid)
        {
            owned.names.remove(k.1.as_str());
            if owned.names.is_empty() {
                self.by_owner.remove(uid);
            }
        }
    }

    /// The keys of the objects `uid` controls.
    pub fn owned(&self, uid: &str) -> Vec<Key> {
        let Some(o) = self.by_owner.get(uid) else { return Vec::new() };
        o.names.iter().map(|n| (o.owner.0.clone(), String::from(&**n))).collect()
    }

    /// How many owners have entries.
    #[cfg(test)]
    pub fn owners(&self) -> usize {
        self.by_owner.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn meta(name: &str, owner: Option<(&str, &str, bool)>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            owner_references: owner.map(|(kind, uid, controller)| {
                vec![OwnerReference {
                    api_version: if kind == "TFJob" { "kubeflow.org/v1".into() } else { "v1".into() },
                    kind: kind.into(),
                    name: format!("job-{uid}"),
                    uid: uid.into(),
                    controller: Some(controller),
                    block_owner_deletion: None,
                }]
            }),
            ..Default::default()
        }
    }

    fn k(name: &str) -> Key {
        ("ns".into(), name.into())
    }

    #[test]
    fn follows_adds_and_deletes() {
        let mut ix = OwnerIndex::default();
        ix.applied(&meta("a", Some(("TFJob", "u1", true))));
        ix.applied(&meta("a", Some(("TFJob", "u1", true))));
        ix.applied(&meta("b", Some(("TFJob", "u1", true))));
        ix.applied(&meta("c", Some(("TFJob", "u2", true))));
        ix.applied(&meta("not-controller", Some(("TFJob", "u1", false))));
        ix.applied(&meta("other-kind", Some(("ReplicaSet", "u1", true))));
        ix.applied(&meta("orphan", None));
        assert_eq!(ix.owned("u1"), [k("a"), k("b")], "an update is not a second entry");
        assert_eq!(ix.owned("u2"), [k("c")]);
        ix.deleted(&meta("a", Some(("TFJob", "u1", true))));
        assert_eq!(ix.owned("u1"), [k("b")]);
        ix.deleted(&meta("b", Some(("TFJob", "u1", true))));
        assert!(ix.owned("u1").is_empty());
        ix.deleted(&meta("c", Some(("TFJob", "u2", true))));
        assert_eq!(ix.owners(), 0, "owners with nothing left are dropped");
        assert!(ix.owned("missing").is_empty());
    }
}
