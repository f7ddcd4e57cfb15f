//! An index of cached pods or services by the uid of the TFJob that controls them (pure), so
//! a reconcile finds a job's objects without scanning every cached object.

use std::collections::{BTreeSet, HashMap};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::names;

/// Namespace and name of a cached object.
pub type Key = (String, String);

/// Controller uid -> the keys of the objects it controls.
#[derive(Debug, Default)]
pub struct OwnerIndex {
    by_owner: HashMap<String, BTreeSet<Key>>,
}

fn controller_uid(meta: &ObjectMeta) -> Option<&str> {
    names::tfjob_controller(meta).map(|o| o.uid.as_str())
}

fn key(meta: &ObjectMeta) -> Option<Key> {
    Some((meta.namespace.clone()?, meta.name.clone()?))
}

impl OwnerIndex {
    /// An object was added or changed.
    pub fn applied(&mut self, meta: &ObjectMeta) {
        if let (Some(uid), Some(k)) = (controller_uid(meta), key(meta)) {
            self.by_owner.entry(uid.to_string()).or_default().insert(k);
        }
    }

    /// An object was deleted.
    pub fn deleted(&mut self, meta: &ObjectMeta) {
        if let (Some(uid), Some(k)) = (controller_uid(meta), key(meta)) {
            self.remove(uid, &k);
        }
    }

    /// Drops a key the cache no longer has (a deletion missed across a re-list).
    pub fn remove(&mut self, uid: &str, k: &Key) {
        if let Some(set) = self.by_owner.get_mut(uid) {
            set.remove(k);
            if set.is_empty() {
                self.by_owner.remove(uid);
            }
        }
    }

    /// The keys of the objects `uid` controls.
    pub fn owned(&self, uid: &str) -> Vec<Key> {
        self.by_owner.get(uid).map(|s| s.iter().cloned().collect()).unwrap_or_default()
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
                    name: "j".into(),
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
    fn follows_adds_deletes_and_missed_deletes() {
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
        ix.remove("u1", &k("b"));
        assert!(ix.owned("u1").is_empty());
        ix.deleted(&meta("c", Some(("TFJob", "u2", true))));
        assert_eq!(ix.owners(), 0, "owners with nothing left are dropped");
        assert!(ix.owned("missing").is_empty());
    }
}
