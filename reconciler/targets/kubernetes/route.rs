//! HTTPRoute weights: reading and rewriting the `backendRefs` of one rule, as JSON.
//! Pure functions, no I/O.

use serde_json::{Value, json};

/// The weights of the stable and candidate (`canary`: the `-canary` or `-preview`
/// Service) backendRefs in a route rule: `None` when the ref is absent. A ref without
/// `weight` counts as 1 (the Gateway API default).
pub fn route_weights(
    route: &Value,
    rule: u32,
    stable: &str,
    canary: &str,
) -> Option<(Option<i64>, Option<i64>)> {
    let refs = route
        .pointer(&format!("/spec/rules/{rule}/backendRefs"))?
        .as_array()?;
    let weight = |name: &str| {
        refs.iter()
            .find(|r| r.get("name").and_then(Value::as_str) == Some(name))
            .map(|r| r.get("weight").and_then(Value::as_i64).unwrap_or(1))
    };
    Some((weight(stable), weight(canary)))
}

/// The route's `rules` with the stable ref at `100 - weight` and the `canary` ref at
/// `weight` (added as a copy of the stable ref if missing), or with the canary ref
/// removed and stable at 100 when `weight` is `None`. Pure, for tests.
pub fn rules_with_weight(
    route: &Value,
    rule: u32,
    stable: &str,
    canary: &str,
    weight: Option<u8>,
) -> Result<Value, String> {
    let mut rules = route
        .pointer("/spec/rules")
        .cloned()
        .ok_or("route has no rules")?;
    let refs = rules
        .get_mut(rule as usize)
        .and_then(|r| r.get_mut("backendRefs"))
        .and_then(Value::as_array_mut)
        .ok_or_else(|| format!("route has no rule {rule} with backendRefs"))?;
    let is = |r: &Value, name: &str| r.get("name").and_then(Value::as_str) == Some(name);
    let Some(stable_ref) = refs.iter().find(|r| is(r, stable)).cloned() else {
        return Err(format!("rule {rule} has no backendRef to service {stable}"));
    };
    match weight {
        None => refs.retain(|r| !is(r, canary)),
        Some(_) => {
            if !refs.iter().any(|r| is(r, canary)) {
                let mut c = stable_ref;
                c["name"] = json!(canary);
                refs.push(c);
            }
        }
    }
    for r in refs.iter_mut() {
        if is(r, stable) {
            r["weight"] = json!(100 - i64::from(weight.unwrap_or(0).min(100)));
        } else if is(r, canary) {
            r["weight"] = json!(i64::from(weight.unwrap_or(0).min(100)));
        }
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_add_a_canary_ref_and_remove_it() {
        let route = json!({ "spec": { "rules": [
            { "matches": [ { "path": { "value": "/" } } ],
              "backendRefs": [ { "name": "web", "port": 80 }, { "name": "other", "port": 80, "weight": 0 } ] }
        ] } });
        let rules = rules_with_weight(&route, 0, "web", "web-canary", Some(25)).expect("rules");
        let with = json!({ "spec": { "rules": rules } });
        assert_eq!(
            route_weights(&with, 0, "web", "web-canary"),
            Some((Some(75), Some(25)))
        );
        assert_eq!(
            with["spec"]["rules"][0]["backendRefs"][2]["port"],
            json!(80)
        );
        assert_eq!(
            with["spec"]["rules"][0]["backendRefs"][1]["name"],
            json!("other")
        );
        let rules = rules_with_weight(&with, 0, "web", "web-canary", None).expect("rules");
        let back = json!({ "spec": { "rules": rules } });
        assert_eq!(
            route_weights(&back, 0, "web", "web-canary"),
            Some((Some(100), None))
        );
        assert!(rules_with_weight(&route, 1, "web", "web-canary", Some(5)).is_err());
        assert!(rules_with_weight(&route, 0, "nope", "nope-canary", Some(5)).is_err());
    }
}
