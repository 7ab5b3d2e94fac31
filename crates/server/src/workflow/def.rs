//! A workflow definition ready to run: nodes by uid with their outgoing edges in file order,
//! and each script node's code and edge conditions compiled into one sandbox program. (Checking
//! a definition at app load, with every problem reported, is `workflow_def`.)

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value as Json;

use super::schedule::Cron;

/// A task's wait for its answer when the node names none (spec: 30,000 ms).
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DefJson {
    wf_uid: String,
    version: String,
    start: String,
    nodes: Vec<NodeJson>,
    #[serde(default)]
    edges: Vec<EdgeJson>,
    #[serde(default)]
    schedules: Vec<ScheduleJson>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NodeJson {
    node_uid: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    retry: Option<RetryJson>,
    #[serde(default)]
    outcome: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RetryJson {
    #[serde(default)]
    attempts: Option<u32>,
    #[serde(default)]
    backoff_ms: Option<u64>,
}

#[derive(Deserialize)]
struct EdgeJson {
    from: String,
    to: String,
    #[serde(default)]
    when: Option<String>,
}

#[derive(Deserialize)]
struct ScheduleJson {
    cron: String,
    #[serde(default)]
    input: Json,
}

#[derive(Debug)]
pub enum NodeKind {
    /// `program`: the node's code, then the choice of edge, as one hook-style body.
    Script {
        program: Arc<str>,
    },
    Task {
        url: String,
    },
    /// Ends the instance: `completed`, or `failed` with `"outcome": "failed"`.
    End {
        failed: bool,
    },
}

#[derive(Debug)]
pub struct Node {
    pub uid: String,
    pub kind: NodeKind,
    /// Targets of the edges leaving this node, in file order.
    pub edges: Vec<String>,
    /// For a task node whose edges have conditions: the program that chooses one.
    pub choose: Option<Arc<str>>,
    /// Tries in all (retries + 1), at least 1.
    pub attempts: i64,
    pub backoff_ms: u64,
    pub timeout_ms: Option<u64>,
}

#[derive(Debug)]
pub struct Schedule {
    pub cron: Cron,
    pub input: Json,
}

/// A definition ready to run.
#[derive(Debug)]
pub struct WfDef {
    pub app_uid: String,
    pub wf_uid: String,
    pub version: String,
    /// The file's text, stored by version when an instance starts on it.
    pub text: String,
    pub start: String,
    pub nodes: HashMap<String, Node>,
    pub schedules: Vec<Schedule>,
}

/// The JavaScript array of edge conditions: `null` for an edge without one.
fn conditions(whens: &[Option<&str>]) -> String {
    let list: Vec<String> = whens
        .iter()
        .map(|w| match w {
            Some(expr) => format!("(input, vars, output) => ({expr}\n)"),
            None => "null".into(),
        })
        .collect();
    format!(
        "const __edges = [{}];\nlet __edge = -1;\n\
         for (let i = 0; i < __edges.length; i++) {{\n\
         if (__edges[i] === null || __edges[i](input, vars, output)) {{ __edge = i; break; }}\n}}\n",
        list.join(",\n")
    )
}

/// A script node's program: `query` carries `{input, vars}` in, and `{output, vars, edge}`
/// out (the sandbox's hook globals; a node's code sees only `input`, `vars` and the usual
/// script globals).
fn script_program(code: &str, whens: &[Option<&str>]) -> String {
    format!(
        "let input = query.input, vars = query.vars;\n\
         let output = await (async () => {{\n{code}\n}})();\n\
         if (output === undefined) output = null;\n\
         {}query = {{ output, vars, edge: __edge }};\n",
        conditions(whens)
    )
}

/// A task node's edge choice: `query` carries `{input, vars, output}` in, `{edge}` out.
fn choose_program(whens: &[Option<&str>]) -> String {
    format!(
        "const input = query.input, vars = query.vars, output = query.output;\n\
         {}query = {{ edge: __edge }};\n",
        conditions(whens)
    )
}

impl WfDef {
    /// Parses and compiles a definition that passed `workflow_def::check` (a problem here is
    /// reported as the error).
    pub fn parse(app_uid: &str, text: &str) -> Result<WfDef, String> {
        let d: DefJson = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let mut nodes = HashMap::new();
        for n in &d.nodes {
            let out: Vec<&EdgeJson> = d.edges.iter().filter(|e| e.from == n.node_uid).collect();
            let whens: Vec<Option<&str>> = out.iter().map(|e| e.when.as_deref()).collect();
            let file = format!("workflows/{}.json#{}", d.wf_uid, n.node_uid);
            let compile = |src: String| -> Result<Arc<str>, String> {
                script::compile(&file, &src, script::Kind::Hook)
                    .map(Arc::from)
                    .map_err(|e| e.to_string())
            };
            let kind = match n.kind.as_str() {
                "script" => NodeKind::Script {
                    program: compile(script_program(
                        n.code.as_deref().unwrap_or_default(),
                        &whens,
                    ))?,
                },
                "task" => NodeKind::Task {
                    url: n.url.clone().unwrap_or_default(),
                },
                "end" => NodeKind::End {
                    failed: n.outcome.as_deref() == Some("failed"),
                },
                other => return Err(format!("node `{}`: unknown type `{other}`", n.node_uid)),
            };
            let choose = match kind {
                NodeKind::Task { .. } if whens.iter().any(Option::is_some) => {
                    Some(compile(choose_program(&whens))?)
                }
                _ => None,
            };
            let retry = n.retry.as_ref();
            nodes.insert(
                n.node_uid.clone(),
                Node {
                    uid: n.node_uid.clone(),
                    kind,
                    edges: out.iter().map(|e| e.to.clone()).collect(),
                    choose,
                    attempts: i64::from(retry.and_then(|r| r.attempts).unwrap_or(1).max(1)),
                    backoff_ms: retry.and_then(|r| r.backoff_ms).unwrap_or(0),
                    timeout_ms: n.timeout_ms,
                },
            );
        }
        if !nodes.contains_key(&d.start) {
            return Err(format!("`start`: no node `{}`", d.start));
        }
        Ok(WfDef {
            app_uid: app_uid.to_string(),
            wf_uid: d.wf_uid,
            version: d.version,
            text: text.to_string(),
            start: d.start,
            nodes,
            schedules: d
                .schedules
                .into_iter()
                .map(|s| {
                    Ok(Schedule {
                        cron: Cron::parse(&s.cron)?,
                        input: s.input,
                    })
                })
                .collect::<Result<_, String>>()?,
        })
    }
}

/// What roles.json says about workflows: `(role, wfUid, action)` for each grant, and every
/// role of the app (a scheduled instance's `system` user holds them all).
pub fn role_grants(text: &str) -> (Vec<(String, String, String)>, Vec<String>) {
    #[derive(Deserialize)]
    struct Roles {
        #[serde(default)]
        roles: Vec<Role>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Role {
        role_uid: String,
        #[serde(default)]
        workflows: HashMap<String, Vec<String>>,
    }
    let Ok(r) = serde_json::from_str::<Roles>(text) else {
        return (Vec::new(), Vec::new());
    };
    let mut grants = Vec::new();
    let mut roles = Vec::new();
    for role in r.roles {
        for (wf, actions) in role.workflows {
            for a in actions {
                grants.push((role.role_uid.clone(), wf.clone(), a));
            }
        }
        roles.push(role.role_uid);
    }
    (grants, roles)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_definition_compiles_with_its_edges_in_file_order() {
        let text = r#"{"wfUid": "w", "version": "1", "start": "a",
          "nodes": [{"nodeUid": "a", "type": "script", "code": "return {ok: true};"},
                    {"nodeUid": "t", "type": "task", "url": "http://x/", "retry": {"attempts": 3, "backoffMs": 5}},
                    {"nodeUid": "e", "type": "end", "outcome": "failed"}],
          "edges": [{"from": "a", "to": "t", "when": "output.ok"}, {"from": "a", "to": "e"},
                    {"from": "t", "to": "e", "when": "vars.x > 1"}]}"#;
        let d = WfDef::parse("app", text).unwrap();
        assert_eq!(d.nodes["a"].edges, ["t", "e"]);
        assert!(d.nodes["a"].choose.is_none());
        assert!(d.nodes["t"].choose.is_some());
        assert_eq!(d.nodes["t"].attempts, 3);
        assert_eq!(d.nodes["t"].backoff_ms, 5);
        assert!(matches!(d.nodes["e"].kind, NodeKind::End { failed: true }));
    }

    #[test]
    fn role_grants_list_workflows_and_roles() {
        let (grants, roles) = role_grants(
            r#"{"roles": [{"roleUid": "hr", "workflows": {"w": ["start", "view"]}}, {"roleUid": "x"}]}"#,
        );
        assert_eq!(roles, ["hr", "x"]);
        assert_eq!(grants.len(), 2);
    }
}
