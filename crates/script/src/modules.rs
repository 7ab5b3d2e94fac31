//! An app's cloud-function modules, and which of them can be *shared*: one instance per
//! context serving every call, instead of an instance (parsed and evaluated afresh) per call.
//!
//! A module is shared only when nothing in it can hold state from one call to the next: its
//! top level is imports, function declarations and `const` bindings of functions or literals,
//! none of them ever reassigned, no `import.meta` or dynamic `import()`, and everything it
//! imports is shared too. Its functions are frozen once evaluated (a property hung on one
//! would be state). Anything else gets a fresh instance per call, as before.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use oxc_allocator::Allocator;
use oxc_ast::ast::{
    BindingPattern, Declaration, ExportDefaultDeclarationKind, Expression, Statement,
    VariableDeclaration, VariableDeclarationKind,
};
use oxc_parser::Parser;
use oxc_semantic::SemanticBuilder;
use oxc_span::SourceType;

/// An app's modules: `moduleUri` (no extension) -> compiled JavaScript.
#[derive(Debug)]
pub struct Modules {
    /// Unique in this process: names the shared instances of this set in a kept context.
    id: u64,
    entries: HashMap<String, Entry>,
    shared: OnceLock<HashSet<String>>,
}

#[derive(Debug)]
struct Entry {
    js: Arc<str>,
    /// Shareable by itself (its imports not considered).
    local: bool,
    /// Its static imports, as written.
    imports: Vec<String>,
}

impl Default for Modules {
    fn default() -> Self {
        Self::new()
    }
}

impl Modules {
    pub fn new() -> Modules {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Modules {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            entries: HashMap::new(),
            shared: OnceLock::new(),
        }
    }

    /// Adds a module compiled by [`crate::compile`] with [`crate::Kind::Module`].
    pub fn insert(&mut self, uri: String, js: Arc<str>) {
        let entry = match analyse(&js) {
            Some(found) => Entry {
                js: match found.freeze.is_empty() {
                    true => js,
                    false => format!(
                        "{js}\n;for (const {FREEZER} of [{}]) {{ Object.freeze({FREEZER}); if ({FREEZER}.prototype) Object.freeze({FREEZER}.prototype); }}\n",
                        found.freeze.join(", ")
                    )
                    .into(),
                },
                local: true,
                imports: found.imports,
            },
            None => Entry {
                js,
                local: false,
                imports: Vec::new(),
            },
        };
        self.entries.insert(uri, entry);
        self.shared = OnceLock::new();
    }

    pub fn contains_key(&self, uri: &str) -> bool {
        self.entries.contains_key(uri)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn source(&self, uri: &str) -> Option<Arc<str>> {
        self.entries.get(uri).map(|e| e.js.clone())
    }

    /// Whether one instance of `uri` may serve every call.
    pub(crate) fn shared(&self, uri: &str) -> bool {
        self.shared
            .get_or_init(|| {
                let mut out = HashSet::new();
                for uri in self.entries.keys() {
                    if self.shareable(uri, &mut Vec::new()) {
                        out.insert(uri.clone());
                    }
                }
                out
            })
            .contains(uri)
    }

    /// `uri` and everything it imports are shareable; `path`: the imports being followed (a
    /// cycle is not shared, to keep this simple).
    fn shareable(&self, uri: &str, path: &mut Vec<String>) -> bool {
        let Some(entry) = self.entries.get(uri) else {
            return false;
        };
        if !entry.local || path.iter().any(|p| p == uri) {
            return false;
        }
        path.push(uri.to_string());
        let ok = entry
            .imports
            .iter()
            .all(|spec| module_key(uri, spec).is_some_and(|key| self.shareable(&key, path)));
        path.pop();
        ok
    }
}

/// `moduleUri` for an import `name` from module `base`: relative names against `base`'s
/// folder, `.js`/`.ts` dropped; `..` never leaves the app.
pub(crate) fn module_key(base: &str, name: &str) -> Option<String> {
    let name = name
        .strip_suffix(".js")
        .or_else(|| name.strip_suffix(".ts"))
        .unwrap_or(name);
    let mut parts: Vec<&str> = Vec::new();
    if name.starts_with("./") || name.starts_with("../") {
        parts.extend(base.split('/'));
        parts.pop();
    }
    for p in name.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// The loop variable of the freezing epilogue.
const FREEZER: &str = "__cloudioFreeze";

/// What makes a module shareable: the functions to freeze and the imports to check.
struct Shareable {
    freeze: Vec<String>,
    imports: Vec<String>,
}

/// `Some` when the module's own text can hold no state between calls.
fn analyse(js: &str) -> Option<Shareable> {
    // Conservative: the words anywhere, even in a string, make the module unshared.
    let squeezed: String = js.chars().filter(|c| !c.is_whitespace()).collect();
    if squeezed.contains("import.meta") || squeezed.contains("import(") {
        return None;
    }
    let allocator = Allocator::default();
    let parsed = Parser::new(&allocator, js, SourceType::mjs()).parse();
    if parsed.panicked || !parsed.diagnostics.is_empty() {
        return None;
    }
    let program = parsed.program;
    let mut out = Shareable {
        freeze: Vec::new(),
        imports: Vec::new(),
    };
    for stmt in &program.body {
        match stmt {
            Statement::ImportDeclaration(d) => out.imports.push(d.source.value.to_string()),
            Statement::ExportAllDeclaration(d) => out.imports.push(d.source.value.to_string()),
            Statement::FunctionDeclaration(f) => out.freeze.push(f.id.as_ref()?.name.to_string()),
            Statement::VariableDeclaration(v) => constants(v, &mut out.freeze)?,
            Statement::ExportNamedDeclaration(_) => {}
            Statement::ExportFromDeclaration(d) => out.imports.push(d.source.value.to_string()),
            Statement::ExportDeclaration(d) => match &d.declaration {
                Declaration::FunctionDeclaration(f) => {
                    out.freeze.push(f.id.as_ref()?.name.to_string())
                }
                Declaration::VariableDeclaration(v) => constants(v, &mut out.freeze)?,
                _ => return None,
            },
            Statement::ExportDefaultDeclaration(d) => match &d.declaration {
                ExportDefaultDeclarationKind::FunctionDeclaration(f) => {
                    out.freeze.push(f.id.as_ref()?.name.to_string())
                }
                _ => return None,
            },
            Statement::EmptyStatement(_) => {}
            _ => return None,
        }
    }
    // Nothing at the top may be reassigned (a function declaration's binding could be), and
    // nothing may shadow what the freezing epilogue uses.
    let scoping = SemanticBuilder::new()
        .build(&program)
        .semantic
        .into_scoping();
    for symbol in scoping.iter_bindings_in(scoping.root_scope_id()) {
        let name = scoping.symbol_name(symbol);
        if name == "Object" || name == FREEZER || scoping.symbol_is_mutated(symbol) {
            return None;
        }
    }
    Some(out)
}

/// A top-level `const` of functions and literals only: the names of the functions.
fn constants(v: &VariableDeclaration<'_>, freeze: &mut Vec<String>) -> Option<()> {
    if v.kind != VariableDeclarationKind::Const {
        return None;
    }
    for d in &v.declarations {
        let BindingPattern::BindingIdentifier(id) = &d.id else {
            return None;
        };
        match d.init.as_ref()? {
            Expression::ArrowFunctionExpression(_) | Expression::FunctionExpression(_) => {
                freeze.push(id.name.to_string())
            }
            Expression::StringLiteral(_)
            | Expression::NumericLiteral(_)
            | Expression::BooleanLiteral(_)
            | Expression::NullLiteral(_) => {}
            Expression::TemplateLiteral(t) if t.expressions.is_empty() => {}
            _ => return None,
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(sources: &[(&str, &str)], uri: &str) -> bool {
        let mut m = Modules::new();
        for (k, js) in sources {
            m.insert(k.to_string(), Arc::from(*js));
        }
        m.shared(uri)
    }

    #[test]
    fn only_stateless_modules_are_shared() {
        let yes = [
            "export function hello(arg) { return { hello: 'world', n: arg.n }; }",
            "const K = 3; const twice = (n) => n * 2; export const run = async (a) => twice(a) + K;",
            "function helper() { return 1; }\nexport default function main() { return helper(); }",
            "import { twice } from './util.js';\nexport function f(n) { return twice(n); }",
        ];
        for js in yes {
            assert!(
                shared(
                    &[("m", js), ("util", "export const twice = (n) => n * 2;")],
                    "m"
                ),
                "{js}"
            );
        }
        let no = [
            "let calls = 0; export function count() { return ++calls; }",
            "var x = 1; export function f() { return x; }",
            "const cache = {}; export function f(k) { return cache[k]; }",
            "const list = []; export function f() { return list; }",
            "function f() {} export function g() { f = null; }",
            "export function f() { return import.meta.url; }",
            "export async function f() { return import('./util.js'); }",
            "export default (a) => a;",
            "export class A {}",
            "console.log('loaded'); export function f() {}",
            "const Object = 1; export function g() {}",
            "const __cloudioFreeze = 1; export function g() {}",
            "import { x } from './stateful.js'; export function f() { return x; }",
            "import { y } from './missing.js'; export function f() { return y; }",
        ];
        for js in no {
            assert!(
                !shared(
                    &[
                        ("m", js),
                        (
                            "stateful",
                            "export let x = 0; export function bump() { x++; }"
                        )
                    ],
                    "m"
                ),
                "{js}"
            );
        }
    }

    #[test]
    fn cycles_are_not_shared() {
        let a = "import { b } from './b.js'; export function a() { return b; }";
        let b = "import { a } from './a.js'; export function b() { return a; }";
        assert!(!shared(&[("a", a), ("b", b)], "a"));
    }

    #[test]
    fn keys_stay_inside_the_app() {
        assert_eq!(
            module_key("payroll/calc", "./util.js"),
            Some("payroll/util".into())
        );
        assert_eq!(module_key("payroll/calc", "../x.ts"), Some("x".into()));
        assert_eq!(module_key("calc", "../../x"), None);
    }
}
