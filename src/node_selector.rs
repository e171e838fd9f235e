//! A NodeSelector against a node, as the scheduler and kubelet match one
//! (component-helpers' `nodeaffinity`): terms are ORed, a term's
//! requirements ANDed; `matchExpressions` look at the node's labels,
//! `matchFields` at its name (`metadata.name`, the only field there is); a
//! term with neither matches nothing, as does a list of no terms. Used for a
//! pod's required node affinity at admission and a PV's node affinity before
//! it is mounted.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm};

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&String>) -> bool {
    let values = r.values.as_deref().unwrap_or(&[]);
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (value.and_then(|v| v.parse::<i64>().ok()), values.first().and_then(|b| b.parse::<i64>().ok())) else {
                return false;
            };
            if r.operator == "Gt" { v > bound } else { v < bound }
        }
        _ => false,
    }
}

fn term_matches(t: &NodeSelectorTerm, labels: &BTreeMap<String, String>, node_name: &str) -> bool {
    let exprs = t.match_expressions.as_deref().unwrap_or(&[]);
    let fields = t.match_fields.as_deref().unwrap_or(&[]);
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let name = node_name.to_string();
    // Fields are looked at only for a node with a name: a PV's affinity is
    // checked against labels alone (CheckNodeAffinity makes a node of them).
    exprs.iter().all(|r| requirement_matches(r, labels.get(&r.key)))
        && (node_name.is_empty()
            || fields.iter().all(|r| r.key == "metadata.name" && matches!(r.operator.as_str(), "In" | "NotIn") && requirement_matches(r, Some(&name))))
}

/// Whether a node with these labels and this name matches any of `terms`;
/// `node_name` empty: fields are not looked at.
pub fn matches(terms: &[NodeSelectorTerm], labels: &BTreeMap<String, String>, node_name: &str) -> bool {
    terms.iter().any(|t| term_matches(t, labels, node_name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(v: serde_json::Value) -> Vec<NodeSelectorTerm> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn labels_fields_and_empty_terms() {
        let labels = BTreeMap::from([("zone".to_string(), "a".to_string()), ("gen".to_string(), "5".to_string())]);
        let m = |v| matches(&terms(v), &labels, "n1");
        assert!(m(serde_json::json!([{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]}])));
        assert!(!m(serde_json::json!([{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}])));
        assert!(m(serde_json::json!([{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]},
                                     {"matchExpressions": [{"key": "gen", "operator": "Gt", "values": ["4"]}]}])), "terms are ORed");
        assert!(!m(serde_json::json!([{"matchExpressions": [{"key": "zone", "operator": "Exists"}, {"key": "gen", "operator": "Lt", "values": ["5"]}]}])), "requirements ANDed");
        assert!(m(serde_json::json!([{"matchExpressions": [{"key": "disk", "operator": "DoesNotExist"}, {"key": "disk", "operator": "NotIn", "values": ["x"]}]}])));
        assert!(m(serde_json::json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}])));
        assert!(!m(serde_json::json!([{"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["n1"]}]}])));
        assert!(!m(serde_json::json!([{"matchFields": [{"key": "spec.unschedulable", "operator": "In", "values": ["n1"]}]}])));
        let by_labels = |v| matches(&terms(v), &labels, "");
        assert!(by_labels(serde_json::json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n2"]}]}])), "no name: fields are not looked at");
        assert!(!by_labels(serde_json::json!([{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}])));
        assert!(!m(serde_json::json!([{}])), "an empty term matches nothing");
        assert!(!m(serde_json::json!([])), "nor do no terms");
        assert!(!m(serde_json::json!([{"matchExpressions": [{"key": "zone", "operator": "Sometimes", "values": ["a"]}]}])));
    }
}
