//! One job: an HTTPRoute's `rules` as JSON, read and recomputed: the weights of the
//! `backendRefs` of one rule, and rollgate's header rule and mirror filter beside it
//! (issue #19). Pure functions, no I/O (the writer is `traffic.rs`); half the file is
//! their tests.
//!
//! The plan's `routeRule: N` counts the route's rules *without* rollgate's header rules
//! (named `rollgate-<plan>-header`, see [`header_rule_name`]): inserting one before the
//! weighted rule never moves the rule a plan (this one or another sharing the route)
//! points at.

use serde_json::{Value, json};

use crate::model::plan::{MatchOn, MatchValue, RequestMatch, Routing};

/// The `name` of the rule rollgate adds to a plan's route for its header route
/// (HTTPRoute rules have an optional `name`, unique within a route, in the
/// standard-channel CRD of Gateway API v1.6.1 in `tests/fixtures/gateway-api`): how
/// rollgate finds its own rule again.
pub fn header_rule_name(plan: &str) -> String {
    format!("rollgate-{plan}-header")
}

/// Whether `rule` is a header rule of rollgate's (of any plan).
fn is_header_rule(rule: &Value) -> bool {
    rule.get("name")
        .and_then(Value::as_str)
        .is_some_and(|n| n.starts_with("rollgate-") && n.ends_with("-header"))
}

/// Where the plan's rule `rule` is in `rules`: the `rule`-th one that is not a header
/// rule of rollgate's.
pub fn rule_index(rules: &[Value], rule: u32) -> Option<usize> {
    rules
        .iter()
        .enumerate()
        .filter(|(_, r)| !is_header_rule(r))
        .nth(rule as usize)
        .map(|(i, _)| i)
}

fn rules_of(route: &Value) -> Option<&Vec<Value>> {
    route.pointer("/spec/rules")?.as_array()
}

/// The weights of the stable and candidate (`canary`: the `-canary` or `-preview`
/// Service) backendRefs in a route rule: `None` when the ref is absent. A ref without
/// `weight` counts as 1 (the Gateway API default).
pub fn route_weights(
    route: &Value,
    rule: u32,
    stable: &str,
    canary: &str,
) -> Option<(Option<i64>, Option<i64>)> {
    let rules = rules_of(route)?;
    let refs = rules[rule_index(rules, rule)?]
        .get("backendRefs")?
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
    let at = rules
        .as_array()
        .and_then(|r| rule_index(r, rule))
        .unwrap_or(usize::MAX);
    let refs = rules
        .get_mut(at)
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

/// The weight of the backendRef to Service `name` in the plan's rule `rule`: `None`
/// when the rule or the ref is absent (a ref without `weight` counts as 1).
pub fn ref_weight(route: &Value, rule: u32, name: &str) -> Option<i64> {
    let rules = rules_of(route)?;
    rules[rule_index(rules, rule)?]
        .get("backendRefs")?
        .as_array()?
        .iter()
        .find(|r| r.get("name").and_then(Value::as_str) == Some(name))
        .map(|r| r.get("weight").and_then(Value::as_i64).unwrap_or(1))
}

/// The fresh baseline's share beside a candidate at `weight`%: as much as the
/// candidate, never more than what the stable has left (validation keeps a baseline
/// to weights up to 50, and drops it at 100).
pub fn baseline_share(weight: i64) -> i64 {
    weight.clamp(0, 100).min(100 - weight.clamp(0, 100))
}

/// The route's `rules` with the fresh baseline's backendRef (Service `baseline`, issue
/// #19) in rule `rule` when `on` (added as a copy of the stable ref if missing) or
/// without it, and the weights made stable `100 - c - b`, baseline `b` =
/// [`baseline_share`]`(c)`, where `c` is the `canary` ref's weight as it is (0 when
/// absent). Foreign refs and rules untouched. Pure, for tests.
pub fn rules_with_baseline(
    route: &Value,
    rule: u32,
    stable: &str,
    canary: &str,
    baseline: &str,
    on: bool,
) -> Result<Value, String> {
    let c = route_weights(route, rule, stable, canary)
        .and_then(|(_, c)| c)
        .unwrap_or(0);
    let mut rules = route
        .pointer("/spec/rules")
        .cloned()
        .ok_or("route has no rules")?;
    let at = rules
        .as_array()
        .and_then(|r| rule_index(r, rule))
        .unwrap_or(usize::MAX);
    let refs = rules
        .get_mut(at)
        .and_then(|r| r.get_mut("backendRefs"))
        .and_then(Value::as_array_mut)
        .ok_or_else(|| format!("route has no rule {rule} with backendRefs"))?;
    let is = |r: &Value, name: &str| r.get("name").and_then(Value::as_str) == Some(name);
    let Some(stable_ref) = refs.iter().find(|r| is(r, stable)).cloned() else {
        return Err(format!("rule {rule} has no backendRef to service {stable}"));
    };
    if on {
        if !refs.iter().any(|r| is(r, baseline)) {
            let mut b = stable_ref;
            b["name"] = json!(baseline);
            refs.push(b);
        }
    } else {
        refs.retain(|r| !is(r, baseline));
    }
    let b = if on { baseline_share(c) } else { 0 };
    for r in refs.iter_mut() {
        if is(r, stable) {
            r["weight"] = json!((100 - c - b).max(0));
        } else if is(r, baseline) {
            r["weight"] = json!(b);
        }
    }
    Ok(rules)
}

/// Whether `filter` is rollgate's mirror to the `canary` Service (a `RequestMirror`
/// whose backendRef names it); any other filter is someone else's.
fn is_our_mirror(filter: &Value, canary: &str) -> bool {
    filter.get("type").and_then(Value::as_str) == Some("RequestMirror")
        && filter
            .pointer("/requestMirror/backendRef/name")
            .and_then(Value::as_str)
            == Some(canary)
}

/// `text` with the characters a regular expression gives a meaning escaped (RE2, the
/// dialect most Gateway API implementations use, takes `\` before any punctuation).
pub fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// One condition as a Gateway API header match. A prefix is a `RegularExpression`
/// `^<escaped prefix>.*`, a pattern is anchored at both ends (the plan's regex matches
/// the whole value, whether the implementation searches or matches whole values); a
/// cookie is a `RegularExpression` on the `Cookie` header: `(^|.*;\s*)name=value(;.*|$)`,
/// name and value escaped, which holds whether the implementation searches the value
/// or matches it whole.
pub fn header_match(m: &RequestMatch) -> Value {
    let (name, kind, value) = match (&m.on, &m.value) {
        (MatchOn::Header(h), MatchValue::Exact(v)) => (h.as_str(), "Exact", v.clone()),
        (MatchOn::Header(h), MatchValue::Prefix(p)) => (
            h.as_str(),
            "RegularExpression",
            format!("^{}.*", regex_escape(p)),
        ),
        (MatchOn::Header(h), MatchValue::Regex(r)) => {
            (h.as_str(), "RegularExpression", format!("^(?:{r})$"))
        }
        (MatchOn::Cookie(c), v) => {
            let value = match v {
                MatchValue::Exact(v) => regex_escape(v),
                MatchValue::Prefix(p) => format!("{}[^;]*", regex_escape(p)),
                MatchValue::Regex(r) => format!("(?:{r})"),
            };
            (
                "Cookie",
                "RegularExpression",
                format!(r"(^|.*;\s*){}={value}(;.*|$)", regex_escape(c)),
            )
        }
    };
    json!({ "name": name, "type": kind, "value": value })
}

/// The route's `rules` with rollgate's routing for `plan` as `routing` says, and
/// nothing else changed: the header rule (named [`header_rule_name`]) removed, and
/// inserted again right before the weighted rule when there are matches; rollgate's
/// `RequestMirror` filter (to the `canary` Service) removed from the weighted rule, and
/// added again at `percent` when the mirror is on. Foreign rules and filters stay as
/// they are. Pure, for tests.
///
/// The header rule is the weighted rule narrowed: each of its matches (path, method,
/// query, headers; none is the Gateway API default, a `PathPrefix` of `/`) with the
/// routing's header conditions added, its filters (but rollgate's mirror) and other
/// settings kept, and the canary Service as its only backend. So it takes only
/// requests the weighted rule would have taken. Precedence: Gateway API orders
/// matches across rules by exact path, longest prefix, method, *most header matches*,
/// most query matches, and only then by rule order; the header rule has every
/// condition of the weighted rule's match plus at least one header, so it wins
/// wherever it matches. It is still placed first, so an implementation that breaks a
/// tie by list order (the spec's last criterion) agrees.
pub fn rules_with_routing(
    route: &Value,
    rule: u32,
    stable: &str,
    canary: &str,
    plan: &str,
    routing: &Routing,
) -> Result<Value, String> {
    let mut rules = rules_of(route).cloned().ok_or("route has no rules")?;
    let name = header_rule_name(plan);
    rules.retain(|r| r.get("name").and_then(Value::as_str) != Some(name.as_str()));
    let at = rule_index(&rules, rule).ok_or_else(|| format!("route has no rule {rule}"))?;
    let weighted = &mut rules[at];
    if let Some(filters) = weighted.get_mut("filters").and_then(Value::as_array_mut) {
        let before = filters.len();
        filters.retain(|f| !is_our_mirror(f, canary));
        if filters.is_empty()
            && before > 0
            && let Some(o) = weighted.as_object_mut()
        {
            o.remove("filters");
        }
    }
    if routing.is_empty() {
        return Ok(Value::Array(rules));
    }
    let stable_ref = weighted
        .get("backendRefs")
        .and_then(Value::as_array)
        .and_then(|refs| {
            refs.iter()
                .find(|r| r.get("name").and_then(Value::as_str) == Some(stable))
        })
        .cloned()
        .ok_or_else(|| format!("rule {rule} has no backendRef to service {stable}"))?;
    let mut header = None;
    if !routing.matches.is_empty() {
        let ours: Vec<Value> = routing.matches.iter().map(header_match).collect();
        let base = weighted
            .get("matches")
            .and_then(Value::as_array)
            .filter(|m| !m.is_empty())
            .cloned()
            .unwrap_or_else(|| vec![json!({ "path": { "type": "PathPrefix", "value": "/" } })]);
        let mut matches = Vec::with_capacity(base.len());
        for mut m in base {
            let mut headers = m
                .get("headers")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for h in &ours {
                let n = h["name"].as_str().unwrap_or_default();
                if headers.iter().any(|e| {
                    e.get("name")
                        .and_then(Value::as_str)
                        .is_some_and(|e| e.eq_ignore_ascii_case(n))
                }) {
                    return Err(format!(
                        "rule {rule} already matches header {n} (or the header route names it twice): one HTTPRoute match cannot test a header twice"
                    ));
                }
                headers.push(h.clone());
            }
            m["headers"] = Value::Array(headers);
            matches.push(m);
        }
        let mut r = weighted.clone();
        let mut canary_ref = stable_ref.clone();
        canary_ref["name"] = json!(canary);
        if let Some(o) = canary_ref.as_object_mut() {
            o.remove("weight");
        }
        r["name"] = json!(name);
        r["matches"] = Value::Array(matches);
        r["backendRefs"] = json!([canary_ref]);
        header = Some(r);
    }
    if routing.mirror > 0 {
        let mut backend = json!({ "group": "", "kind": "Service", "name": canary });
        if let Some(port) = stable_ref.get("port") {
            backend["port"] = port.clone();
        }
        let filter = json!({
            "type": "RequestMirror",
            "requestMirror": { "backendRef": backend, "percent": routing.mirror },
        });
        match weighted.get_mut("filters").and_then(Value::as_array_mut) {
            Some(filters) => filters.push(filter),
            None => weighted["filters"] = json!([filter]),
        }
    }
    if let Some(h) = header {
        rules.insert(at, h);
    }
    Ok(Value::Array(rules))
}

/// rollgate's routing for `plan` as the route shows it, in words, for logs and
/// reasons: `header rule rollgate-web-header, mirror 20%`, or `no header rule, no mirror`.
pub fn routing_shown(route: &Value, rule: u32, canary: &str, plan: &str) -> String {
    let name = header_rule_name(plan);
    let rules = rules_of(route).map(Vec::as_slice).unwrap_or_default();
    let header = rules
        .iter()
        .any(|r| r.get("name").and_then(Value::as_str) == Some(name.as_str()));
    let mirror = rule_index(rules, rule)
        .and_then(|i| rules[i].get("filters"))
        .and_then(Value::as_array)
        .and_then(|f| f.iter().find(|f| is_our_mirror(f, canary)))
        .map(|f| {
            f.pointer("/requestMirror/percent")
                .and_then(Value::as_i64)
                .map_or("mirror (no percent: all)".to_owned(), |p| {
                    format!("mirror {p}%")
                })
        });
    format!(
        "{}, {}",
        if header {
            format!("header rule {name}")
        } else {
            "no header rule".to_owned()
        },
        mirror.unwrap_or_else(|| "no mirror".to_owned())
    )
}

/// `rules` with the values the Gateway API CRD defaults filled in (a rule without
/// matches matches `PathPrefix /`; header and query matches are `Exact`; a backendRef
/// is a core `Service` of weight 1; an empty `filters` is none), so what rollgate wrote
/// and what the API server stored compare equal. Pure.
pub fn normalized(rules: &Value) -> Value {
    let mut rules = rules.clone();
    let default = |o: &mut Value, key: &str, v: Value| {
        if o.get(key).is_none_or(Value::is_null) {
            o[key] = v;
        }
    };
    for r in rules.as_array_mut().into_iter().flatten() {
        if r.get("matches")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
        {
            r["matches"] = json!([{}]);
        }
        for m in r["matches"].as_array_mut().into_iter().flatten() {
            default(m, "path", json!({}));
            default(&mut m["path"], "type", json!("PathPrefix"));
            default(&mut m["path"], "value", json!("/"));
            for key in ["headers", "queryParams"] {
                for h in m
                    .get_mut(key)
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                {
                    default(h, "type", json!("Exact"));
                }
            }
        }
        for b in r
            .get_mut("backendRefs")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            default(b, "group", json!(""));
            default(b, "kind", json!("Service"));
            default(b, "weight", json!(1));
        }
        for f in r
            .get_mut("filters")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if let Some(b) = f.pointer_mut("/requestMirror/backendRef") {
                default(b, "group", json!(""));
                default(b, "kind", json!("Service"));
            }
        }
        if r.get("filters")
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty)
            && let Some(o) = r.as_object_mut()
        {
            o.remove("filters");
        }
    }
    rules
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

    #[test]
    fn a_baseline_ref_takes_the_canary_s_share_from_the_stable_and_goes_again() {
        let route = json!({ "spec": { "rules": [
            { "backendRefs": [ { "name": "other", "port": 80, "weight": 3 } ] },
            { "backendRefs": [ { "name": "web", "port": 80, "weight": 75 },
                               { "name": "web-canary", "port": 80, "weight": 25 } ] },
        ] } });
        let rules = rules_with_baseline(&route, 1, "web", "web-canary", "web-baseline", true)
            .expect("rules");
        assert_eq!(
            rules,
            json!([
                { "backendRefs": [ { "name": "other", "port": 80, "weight": 3 } ] },
                { "backendRefs": [ { "name": "web", "port": 80, "weight": 50 },
                                   { "name": "web-canary", "port": 80, "weight": 25 },
                                   { "name": "web-baseline", "port": 80, "weight": 25 } ] },
            ])
        );
        let with = json!({ "spec": { "rules": rules } });
        assert_eq!(ref_weight(&with, 1, "web-baseline"), Some(25));
        let back = rules_with_baseline(&with, 1, "web", "web-canary", "web-baseline", false)
            .expect("rules");
        assert_eq!(back, route["spec"]["rules"]);
        assert_eq!(baseline_share(50), 50);
        assert_eq!(baseline_share(100), 0);
        assert!(rules_with_baseline(&route, 0, "web", "web-canary", "web-baseline", true).is_err());
    }

    fn route() -> Value {
        json!({ "spec": { "rules": [
            { "matches": [ { "path": { "type": "PathPrefix", "value": "/admin" } } ],
              "backendRefs": [ { "name": "admin", "port": 80 } ] },
            { "matches": [ { "path": { "type": "PathPrefix", "value": "/shop" } },
                           { "path": { "type": "Exact", "value": "/" }, "method": "GET" } ],
              "filters": [ { "type": "RequestHeaderModifier",
                             "requestHeaderModifier": { "set": [ { "name": "x-from", "value": "gw" } ] } } ],
              "backendRefs": [ { "name": "web", "port": 80, "weight": 90 },
                               { "name": "web-canary", "port": 80, "weight": 10 } ] }
        ] } })
    }

    fn routing(mirror: u8) -> Routing {
        Routing {
            matches: vec![
                RequestMatch {
                    on: MatchOn::Header("X-Canary".into()),
                    value: MatchValue::Exact("1".into()),
                },
                RequestMatch {
                    on: MatchOn::Cookie("beta".into()),
                    value: MatchValue::Prefix("yes.".into()),
                },
            ],
            mirror,
            baseline: false,
        }
    }

    #[test]
    fn a_header_rule_narrows_the_weighted_rule_and_the_mirror_joins_its_filters() {
        let route = route();
        let rules =
            rules_with_routing(&route, 1, "web", "web-canary", "web", &routing(20)).expect("rules");
        let with = json!({ "spec": { "rules": rules } });
        let rules = with["spec"]["rules"].as_array().expect("rules");
        assert_eq!(rules.len(), 3);
        assert_eq!(
            rules[0], route["spec"]["rules"][0],
            "foreign rule untouched"
        );
        let header = &rules[1];
        assert_eq!(header["name"], json!("rollgate-web-header"));
        let ours = json!([
            { "name": "X-Canary", "type": "Exact", "value": "1" },
            { "name": "Cookie", "type": "RegularExpression",
              "value": r"(^|.*;\s*)beta=yes\.[^;]*(;.*|$)" }
        ]);
        assert_eq!(
            header["matches"],
            json!([
                { "path": { "type": "PathPrefix", "value": "/shop" }, "headers": ours },
                { "path": { "type": "Exact", "value": "/" }, "method": "GET", "headers": ours }
            ]),
            "each of the weighted rule's matches, narrowed"
        );
        assert_eq!(
            header["backendRefs"],
            json!([ { "name": "web-canary", "port": 80 } ])
        );
        assert_eq!(
            header["filters"], route["spec"]["rules"][1]["filters"],
            "the weighted rule's own filters apply to the requests it gives up"
        );
        assert_eq!(
            rules[2]["filters"],
            json!([
                route["spec"]["rules"][1]["filters"][0],
                { "type": "RequestMirror", "requestMirror": {
                    "backendRef": { "group": "", "kind": "Service", "name": "web-canary", "port": 80 },
                    "percent": 20 } }
            ])
        );
        // The plan's rule 1 is still rule 1: rollgate's rule is not counted.
        assert_eq!(
            route_weights(&with, 1, "web", "web-canary"),
            Some((Some(90), Some(10)))
        );
        let moved = rules_with_weight(&with, 1, "web", "web-canary", Some(30)).expect("weights");
        assert_eq!(moved[1], rules[1].clone());
        assert_eq!(moved[2]["backendRefs"][0]["weight"], json!(70));
        assert_eq!(
            routing_shown(&with, 1, "web-canary", "web"),
            "header rule rollgate-web-header, mirror 20%"
        );
        // Again with another routing: rewritten, not added twice; then taken away.
        let again =
            rules_with_routing(&with, 1, "web", "web-canary", "web", &routing(0)).expect("rules");
        assert_eq!(again.as_array().map(Vec::len), Some(3));
        assert_eq!(again[2]["filters"], route["spec"]["rules"][1]["filters"]);
        let gone = rules_with_routing(&with, 1, "web", "web-canary", "web", &Routing::default())
            .expect("rules");
        assert_eq!(gone, route["spec"]["rules"], "back to the route as it was");
        assert_eq!(
            routing_shown(
                &json!({ "spec": { "rules": gone } }),
                1,
                "web-canary",
                "web"
            ),
            "no header rule, no mirror"
        );
    }

    #[test]
    fn a_rule_without_matches_gets_the_default_path_and_a_header_named_twice_is_refused() {
        let route = json!({ "spec": { "rules": [ { "backendRefs": [ { "name": "web", "port": 80 } ] } ] } });
        let rules =
            rules_with_routing(&route, 0, "web", "web-canary", "p", &routing(0)).expect("rules");
        assert_eq!(
            rules[0]["matches"][0]["path"],
            json!({ "type": "PathPrefix", "value": "/" })
        );
        let twice = json!({ "spec": { "rules": [ {
            "matches": [ { "headers": [ { "name": "x-canary", "value": "0" } ] } ],
            "backendRefs": [ { "name": "web", "port": 80 } ] } ] } });
        let err = rules_with_routing(&twice, 0, "web", "web-canary", "p", &routing(0))
            .expect_err("header tested twice");
        assert!(err.contains("X-Canary"), "{err}");
        assert!(rules_with_routing(&route, 3, "web", "web-canary", "p", &routing(5)).is_err());
        assert!(rules_with_routing(&route, 0, "api", "api-canary", "p", &routing(5)).is_err());
    }

    /// The regular expressions hold whether an implementation searches the value (a
    /// partial match) or matches it whole (Envoy's RE2 `safe_regex`).
    #[test]
    fn cookie_and_prefix_expressions_match_the_same_values_searched_or_whole() {
        let m = |on: MatchOn, value: MatchValue| header_match(&RequestMatch { on, value });
        let cases: &[(Value, &[&str], &[&str])] = &[
            (
                m(
                    MatchOn::Cookie("beta".into()),
                    MatchValue::Exact("a.b".into()),
                ),
                &[
                    "beta=a.b",
                    "x=1; beta=a.b",
                    "x=1;beta=a.b; y=2",
                    "beta=a.b;",
                ],
                &[
                    "beta=aXb",
                    "xbeta=a.b",
                    "beta=a.bc",
                    "x=beta=a.b",
                    "beta=a.b2; y=1",
                ],
            ),
            (
                m(
                    MatchOn::Cookie("beta".into()),
                    MatchValue::Prefix("v(2)".into()),
                ),
                &["beta=v(2)", "beta=v(2)x; y=1", "y=1; beta=v(2)-rc"],
                &["beta=v2", "y=v(2); beta=1", "beta=w(2)"],
            ),
            (
                m(
                    MatchOn::Cookie("beta".into()),
                    MatchValue::Regex("[0-9]+".into()),
                ),
                &["beta=12", "a=b; beta=7"],
                &["beta=1x", "beta="],
            ),
            (
                m(
                    MatchOn::Header("x-v".into()),
                    MatchValue::Prefix("1.2+".into()),
                ),
                &["1.2+", "1.2+rc"],
                &["1x2+", "v1.2+", "1.22"],
            ),
            (
                m(
                    MatchOn::Header("x-v".into()),
                    MatchValue::Regex("a|b".into()),
                ),
                &["a", "b"],
                &["ab", "xa", "c"],
            ),
        ];
        for (header, yes, no) in cases {
            assert_eq!(header["type"], json!("RegularExpression"));
            let pattern = header["value"].as_str().expect("value");
            let search = regex::Regex::new(pattern).expect("regex");
            let whole = regex::Regex::new(&format!("^(?:{pattern})$")).expect("regex");
            for v in *yes {
                assert!(search.is_match(v) && whole.is_match(v), "{pattern} on {v}");
            }
            for v in *no {
                assert!(
                    !search.is_match(v) && !whole.is_match(v),
                    "{pattern} not on {v}"
                );
            }
        }
        assert_eq!(
            m(
                MatchOn::Header("X-Canary".into()),
                MatchValue::Exact("1".into())
            ),
            json!({ "name": "X-Canary", "type": "Exact", "value": "1" })
        );
    }

    #[test]
    fn defaults_filled_in_compare_equal() {
        let written = json!([ { "matches": [ { "headers": [ { "name": "a", "value": "1" } ] } ],
            "filters": [],
            "backendRefs": [ { "name": "web", "port": 80 } ] } ]);
        let stored = json!([ { "matches": [ { "path": { "type": "PathPrefix", "value": "/" },
                "headers": [ { "name": "a", "type": "Exact", "value": "1" } ] } ],
            "backendRefs": [ { "group": "", "kind": "Service", "name": "web", "port": 80, "weight": 1 } ] } ]);
        assert_eq!(normalized(&written), normalized(&stored));
        assert_ne!(normalized(&written), normalized(&json!([])));
    }
}
