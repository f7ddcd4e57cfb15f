//! JSON merge patches (RFC 7386) of what changed between two values: the status writer sends
//! only the fields of a job's status that changed.

use serde_json::{Map, Value};

/// The merge patch that turns `old` into `new`: for objects, their changed keys only (a key
/// gone is `null`); any other value (lists included, which a merge patch replaces whole) is
/// `new` when it differs. `None` when nothing changed.
pub fn diff(old: &Value, new: &Value) -> Option<Value> {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let mut out = Map::new();
            for (k, nv) in n {
                match o.get(k) {
                    Some(ov) => {
                        if let Some(d) = diff(ov, nv) {
                            out.insert(k.clone(), d);
                        }
                    }
                    // A new null says nothing a missing key does not.
                    None if nv.is_null() => {}
                    None => {
                        out.insert(k.clone(), without_nulls(nv));
                    }
                }
            }
            for (k, ov) in o {
                if !n.contains_key(k) && !ov.is_null() {
                    out.insert(k.clone(), Value::Null);
                }
            }
            (!out.is_empty()).then_some(Value::Object(out))
        }
        // An object written where there was none: its nulls would mean "remove" inside it.
        (_, Value::Object(_)) => Some(without_nulls(new)),
        _ if old == new => None,
        _ => Some(new.clone()),
    }
}

/// `v` with the null members of its objects dropped (a merge patch reads them as deletions).
fn without_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), without_nulls(v))).collect(),
        ),
        other => other.clone(),
    }
}

/// Applies a merge patch (RFC 7386) to `target`: what the API server does with [`diff`]'s
/// result. For tests.
#[cfg(test)]
pub fn apply(target: &Value, patch: &Value) -> Value {
    let Value::Object(p) = patch else { return patch.clone() };
    let mut out = match target {
        Value::Object(t) => t.clone(),
        _ => Map::new(),
    };
    for (k, pv) in p {
        if pv.is_null() {
            out.remove(k);
        } else {
            let merged = apply(out.get(k).unwrap_or(&Value::Null), pv);
            out.insert(k.clone(), merged);
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_patch_holds_what_changed_and_applies_to_the_new_value() {
        let cases = [
            (json!({"a": 1}), json!({"a": 1}), None),
            (json!({"a": 1, "b": 2}), json!({"a": 1, "b": 3}), Some(json!({"b": 3}))),
            (json!({"a": 1, "b": 2}), json!({"a": 1}), Some(json!({"b": null}))),
            (json!({"a": 1, "b": null}), json!({"a": 1}), None),
            (json!({"a": 1}), json!({"a": 1, "b": null}), None),
            (json!({}), json!({"c": {"x": 1, "y": null}}), Some(json!({"c": {"x": 1}}))),
            (
                json!({"r": {"Worker": {"active": 4}, "PS": {"active": 1}}}),
                json!({"r": {"Worker": {"active": 3, "succeeded": 1}, "PS": {"active": 1}}}),
                Some(json!({"r": {"Worker": {"active": 3, "succeeded": 1}}})),
            ),
            (
                json!({"conditions": [{"type": "Created"}]}),
                json!({"conditions": [{"type": "Created"}, {"type": "Running"}]}),
                Some(json!({"conditions": [{"type": "Created"}, {"type": "Running"}]})),
            ),
            (json!({"s": null}), json!({"s": {"a": 1}}), Some(json!({"s": {"a": 1}}))),
            (json!({"s": {"a": 1}}), json!({"s": null}), Some(json!({"s": null}))),
            (json!({"n": 1}), json!({"n": "1"}), Some(json!({"n": "1"}))),
        ];
        for (old, new, want) in cases {
            let got = diff(&old, &new);
            assert_eq!(got, want, "{old} -> {new}");
            let applied = apply(&old, &got.unwrap_or_else(|| json!({})));
            assert_eq!(without_nulls(&applied), without_nulls(&new), "{old} -> {new}");
        }
    }
}
