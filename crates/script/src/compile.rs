//! From a script file to the JavaScript QuickJS runs: TypeScript types stripped by a real
//! TypeScript parser (oxc), imports of `@cloudio-saas/datasource-types` removed whatever their
//! form, then a syntax check by QuickJS itself. Runs when an app loads, never per request.

use std::path::Path;

use oxc_allocator::Allocator;
use oxc_ast::ast::{Program, Statement};
use oxc_codegen::Codegen;
use oxc_parser::{ParseOptions, Parser};
use oxc_semantic::SemanticBuilder;
use oxc_span::SourceType;
use oxc_transformer::{TransformOptions, Transformer};

use crate::CompileError;

/// The product's type package: imports from it are types only, removed at load.
pub const TYPES_PACKAGE: &str = "@cloudio-saas/datasource-types";

/// What a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The body of an async function: top-level `await` and `return`, no imports.
    Hook,
    /// An ES module (a cloud function file).
    Module,
}

/// Strips types from `source` (a `.js` or `.ts` file named `file`) and checks its syntax.
pub fn compile(file: &str, source: &str, kind: Kind) -> Result<String, CompileError> {
    let js = strip_types(file, source, kind)?;
    crate::sandbox::check_syntax(file, &js, kind)?;
    Ok(js)
}

fn line_of(source: &str, offset: u32) -> usize {
    let end = (offset as usize).min(source.len());
    source.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

fn strip_types(file: &str, source: &str, kind: Kind) -> Result<String, CompileError> {
    let allocator = Allocator::default();
    // `.js` files may carry annotations too: both are parsed as TypeScript modules.
    let source_type = SourceType::ts().with_module(true);
    let options = ParseOptions {
        allow_return_outside_function: kind == Kind::Hook,
        ..ParseOptions::default()
    };
    let parsed = Parser::new(&allocator, source, source_type)
        .with_options(options)
        .parse();
    if let Some(err) = parsed.diagnostics.first() {
        let line = err
            .labels
            .as_ref()
            .first()
            .map_or(1, |l| line_of(source, l.offset()));
        return Err(CompileError {
            file: file.to_string(),
            line,
            message: err.message.to_string(),
        });
    }
    if parsed.panicked {
        return Err(CompileError {
            file: file.to_string(),
            line: 1,
            message: "the file could not be parsed".into(),
        });
    }
    let mut program = parsed.program;
    remove_type_package_imports(&mut program);
    if kind == Kind::Hook
        && let Some(stmt) = program.body.iter().find(|s| s.is_module_declaration())
    {
        return Err(CompileError {
            file: file.to_string(),
            line: line_of(source, span_start(stmt)),
            message: "a hook cannot import or export (only type imports are allowed)".into(),
        });
    }
    let scoping = SemanticBuilder::new()
        .build(&program)
        .semantic
        .into_scoping();
    let options = TransformOptions::default();
    let transformed = Transformer::new(&allocator, Path::new(file), &options)
        .build_with_scoping(scoping, &mut program);
    if let Some(err) = transformed.diagnostics.first() {
        return Err(CompileError {
            file: file.to_string(),
            line: 1,
            message: err.message.to_string(),
        });
    }
    Ok(Codegen::new().build(&program).code)
}

fn span_start(stmt: &Statement<'_>) -> u32 {
    use oxc_span::GetSpan;
    stmt.span().start
}

fn remove_type_package_imports(program: &mut Program<'_>) {
    program.body.retain(|stmt| {
        !matches!(stmt, Statement::ImportDeclaration(decl) if decl.source.value == TYPES_PACKAGE)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_annotations_and_type_imports() {
        let src = "import { DatasourceScriptContext } from '@cloudio-saas/datasource-types';\n\
                   import type { X } from '@cloudio-saas/datasource-types';\n\
                   const n: number = 1;\nfunction f(a: string): string { return a; }\nreturn f(String(n));";
        let js = strip_types("h.ts", src, Kind::Hook).unwrap();
        assert!(!js.contains("datasource-types"), "{js}");
        assert!(!js.contains(": number"), "{js}");
        assert!(js.contains("return f(String(n))"), "{js}");
    }

    #[test]
    fn syntax_error_names_the_line() {
        let err = strip_types("x.js", "const a = 1;\nconst b = ;\n", Kind::Hook).unwrap_err();
        assert_eq!(err.line, 2, "{err}");
        assert_eq!(err.file, "x.js");
    }

    #[test]
    fn hooks_cannot_import() {
        let err = strip_types("x.js", "import fs from 'fs';\nreturn 1;", Kind::Hook).unwrap_err();
        assert!(err.message.contains("cannot import"), "{err}");
    }

    #[test]
    fn modules_keep_exports() {
        let js = strip_types(
            "m.ts",
            "import { g } from './util.js';\nexport async function f(x: {a: number}) { return g(x.a); }",
            Kind::Module,
        )
        .unwrap();
        assert!(js.contains("export async function f(x)"), "{js}");
        assert!(js.contains("./util.js"), "{js}");
    }
}
