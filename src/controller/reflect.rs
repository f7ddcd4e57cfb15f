//! Reflects a watch into its cache in place. The first list fills the empty store and marks
//! it ready, as kube's reflector does; a later re-list (after a 410 Gone or an API server
//! restart) updates the store object by object instead of building a second store beside
//! it: an object listed again at the version the store holds is kept as it is (the same
//! allocation), a newer one replaces it, and what the list no longer shows is removed when
//! the list is complete. A re-list therefore never doubles the cache: it costs a 16-byte
//! fingerprint per listed object, and the objects that changed.
//!
//! Meanwhile reconciles read the store as it is being brought up to date: each object at
//! the version the watch last showed or the newer one the list shows, never one missing
//! that the API server still has, which is no worse than a watch that lags.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use kube::Resource;
use kube::ResourceExt;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;

/// What a re-list remembers of a listed object: a 128-bit fingerprint of its namespace and
/// name (two independent SipHash values). A re-list holds one per listed object, 16 bytes
/// instead of a key with two heap strings; two objects sharing one is as likely as a random
/// 128-bit collision, which the sweep would need to keep a deleted object.
fn fingerprint(namespace: Option<&str>, name: &str) -> u128 {
    let half = |salt: u8| {
        let mut h = DefaultHasher::new();
        (salt, namespace, name).hash(&mut h);
        h.finish()
    };
    (u128::from(half(0)) << 64) | u128::from(half(1))
}

fn fingerprint_of<K: Resource>(obj: &K) -> u128 {
    let meta = obj.meta();
    fingerprint(meta.namespace.as_deref(), meta.name.as_deref().unwrap_or_default())
}

/// The cache of one watch and what its current re-list has shown.
pub struct InPlace<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    writer: Writer<K>,
    store: Store<K>,
    /// The first list is complete (the store is ready).
    listed: bool,
    /// During a re-list: the fingerprints of the objects it has shown so far.
    relisting: Option<HashSet<u128>>,
}

impl<K> InPlace<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    pub fn new(writer: Writer<K>) -> InPlace<K> {
        let store = writer.as_reader();
        InPlace { writer, store, listed: false, relisting: None }
    }

    /// Brings the store up to date with one watch event. Returns what a completed re-list
    /// removed: the objects the store held that the list no longer shows (deleted while the
    /// watch was down), so the caller can drop them from its indexes.
    pub fn apply(&mut self, event: &watcher::Event<K>) -> Vec<Arc<K>> {
        if !self.listed {
            // The first list goes whole into the empty store, which is then ready.
            self.writer.apply_watcher_event(event);
            self.listed = matches!(event, watcher::Event::InitDone);
            return Vec::new();
        }
        match event {
            watcher::Event::Init => self.relisting = Some(HashSet::new()),
            watcher::Event::InitApply(obj) => {
                let unchanged = self.store.get(&ObjectRef::from_obj(obj)).is_some_and(|held| {
                    held.resource_version().is_some() && held.resource_version() == obj.resource_version()
                });
                self.relisting.get_or_insert_with(HashSet::new).insert(fingerprint_of(obj));
                if !unchanged {
                    self.writer.apply_watcher_event(&watcher::Event::Apply(obj.clone()));
                }
            }
            watcher::Event::InitDone => {
                let shown = self.relisting.take().unwrap_or_default();
                let gone: Vec<Arc<K>> = self
                    .store
                    .state()
                    .into_iter()
                    .filter(|o| !shown.contains(&fingerprint_of(o.as_ref())))
                    .collect();
                for o in &gone {
                    self.writer.apply_watcher_event(&watcher::Event::Delete(K::clone(o)));
                }
                return gone;
            }
            watcher::Event::Apply(_) | watcher::Event::Delete(_) => self.writer.apply_watcher_event(event),
        }
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::ObjectMeta;
    use kube::runtime::reflector;
    use std::sync::Arc;

    fn pod(name: &str, rv: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn held(store: &Store<Pod>, name: &str) -> Option<Arc<Pod>> {
        store.get(&ObjectRef::new(name).within("ns"))
    }

    fn versions(store: &Store<Pod>) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> =
            store.state().iter().map(|p| (p.name_any(), p.resource_version().unwrap_or_default())).collect();
        v.sort();
        v
    }

    #[test]
    fn a_relist_updates_in_place_and_keeps_unchanged_objects() {
        use watcher::Event::*;
        let (store, writer) = reflector::store::<Pod>();
        let mut cache = InPlace::new(writer);
        for e in [Init, InitApply(pod("a", "1")), InitApply(pod("b", "1")), InitApply(pod("c", "1"))] {
            assert!(cache.apply(&e).is_empty());
            assert!(store.is_empty(), "the first list is not shown before it is complete");
        }
        cache.apply(&InitDone);
        cache.apply(&Apply(pod("a", "2")));
        let a_before = held(&store, "a").unwrap();
        let b_before = held(&store, "b").unwrap();
        // The re-list: a unchanged, b newer, c gone, d new.
        cache.apply(&Init);
        assert_eq!(store.len(), 3, "the store keeps serving during a re-list");
        cache.apply(&InitApply(pod("a", "2")));
        cache.apply(&InitApply(pod("b", "3")));
        cache.apply(&InitApply(pod("d", "3")));
        assert_eq!(
            versions(&store),
            [
                ("a".into(), "2".into()),
                ("b".into(), "3".into()),
                ("c".into(), "1".into()),
                ("d".into(), "3".into())
            ],
            "updated object by object; c is only known gone once the list is complete"
        );
        let gone: Vec<String> = cache.apply(&InitDone).iter().map(|p| p.name_any()).collect();
        assert_eq!(gone, ["c"], "the re-list names what it removed");
        assert_eq!(
            versions(&store),
            [("a".into(), "2".into()), ("b".into(), "3".into()), ("d".into(), "3".into())]
        );
        assert!(Arc::ptr_eq(&a_before, &held(&store, "a").unwrap()), "an unchanged object is not copied");
        assert!(!Arc::ptr_eq(&b_before, &held(&store, "b").unwrap()));
        // Watch events after the re-list apply as usual.
        cache.apply(&Delete(pod("d", "4")));
        cache.apply(&Apply(pod("e", "5")));
        assert_eq!(
            versions(&store),
            [("a".into(), "2".into()), ("b".into(), "3".into()), ("e".into(), "5".into())]
        );
    }

    #[test]
    fn a_fingerprint_tells_namespaces_and_names_apart() {
        let all = [
            fingerprint(Some("ns"), "a"),
            fingerprint(Some("other"), "a"),
            fingerprint(Some("n"), "sa"),
            fingerprint(None, "a"),
            fingerprint(Some("ns"), "b"),
        ];
        let distinct: HashSet<u128> = all.into_iter().collect();
        assert_eq!(distinct.len(), all.len(), "{all:?}");
        assert_eq!(fingerprint(Some("ns"), "a"), fingerprint_of(&pod("a", "1")), "stable across calls");
    }
}
