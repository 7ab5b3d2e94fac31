//! Checking a workflow definition (`workflows/<wfUid>.json`, spec section 7) when its app is
//! loaded or patched: the shape, the graph and the scripts. Running workflows is not here.

use std::collections::HashSet;

use serde_json::Value;

/// Every problem of one definition, each naming the file.
pub fn check(path: &str, wf_uid: &str, text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let def: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return vec![format!("{path}: {e}")],
    };
    let Some(obj) = def.as_object() else {
        return vec![format!("{path}: a workflow is a JSON object")];
    };
    let text_field = |name: &str| obj.get(name).and_then(Value::as_str);
    match text_field("wfUid") {
        Some(u) if u == wf_uid => {}
        Some(u) => problems.push(format!("{path}: `wfUid`: `{u}` must match the file name")),
        None => problems.push(format!("{path}: `wfUid`: a string is required")),
    }
    if text_field("version").is_none() {
        problems.push(format!("{path}: `version`: a string is required"));
    }
    let mut nodes = HashSet::new();
    match obj.get("nodes").and_then(Value::as_array) {
        None => problems.push(format!("{path}: `nodes`: an array is required")),
        Some(list) => {
            for (i, node) in list.iter().enumerate() {
                let at = format!("{path}: `nodes[{i}]`");
                let Some(uid) = node.get("nodeUid").and_then(Value::as_str) else {
                    problems.push(format!("{at}.nodeUid: a string is required"));
                    continue;
                };
                if !nodes.insert(uid.to_string()) {
                    problems.push(format!("{at}.nodeUid: `{uid}` is used twice"));
                }
                match node.get("type").and_then(Value::as_str) {
                    Some("script") => match node.get("code").and_then(Value::as_str) {
                        Some(code) => {
                            let file = format!("{path}#{uid}");
                            if let Err(e) = script::compile(&file, code, script::Kind::Hook) {
                                problems.push(e.to_string());
                            }
                        }
                        None => problems.push(format!("{at}.code: a string is required")),
                    },
                    Some("task") => {
                        if node.get("url").and_then(Value::as_str).is_none() {
                            problems.push(format!("{at}.url: a string is required"));
                        }
                    }
                    Some("end") => {}
                    other => problems.push(format!(
                        "{at}.type: {} is not a node type (script, task, end)",
                        other.map_or("a missing type".to_string(), |t| format!("`{t}`"))
                    )),
                }
            }
        }
    }
    match text_field("start") {
        Some(s) if nodes.contains(s) => {}
        Some(s) => problems.push(format!("{path}: `start`: no node `{s}`")),
        None => problems.push(format!("{path}: `start`: a string is required")),
    }
    for (i, edge) in obj
        .get("edges")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        for end in ["from", "to"] {
            match edge.get(end).and_then(Value::as_str) {
                Some(n) if nodes.contains(n) => {}
                Some(n) => problems.push(format!("{path}: `edges[{i}].{end}`: no node `{n}`")),
                None => problems.push(format!("{path}: `edges[{i}].{end}`: a string is required")),
            }
        }
        if let Some(when) = edge.get("when") {
            match when.as_str() {
                Some(expr) => {
                    let file = format!("{path}#edges[{i}].when");
                    if let Err(e) =
                        script::compile(&file, &format!("return ({expr}\n);"), script::Kind::Hook)
                    {
                        problems.push(e.to_string());
                    }
                }
                None => problems.push(format!("{path}: `edges[{i}].when`: a string is required")),
            }
        }
    }
    match obj.get("schedules") {
        None => {}
        Some(Value::Array(list)) => {
            for (i, s) in list.iter().enumerate() {
                match s.get("cron").and_then(Value::as_str) {
                    Some(cron) => {
                        if let Err(e) = crate::workflow::schedule::Cron::parse(cron) {
                            problems.push(format!("{path}: `schedules[{i}].cron`: {e}"));
                        }
                    }
                    None => problems.push(format!(
                        "{path}: `schedules[{i}].cron`: a string is required"
                    )),
                }
            }
        }
        Some(_) => problems.push(format!("{path}: `schedules`: an array is required")),
    }
    problems
}
