// Parses an AsyncAPI document with the official parser (@asyncapi/parser, pinned in
// package.json) and prints what it finds. Exits non-zero when the parser finds an error or
// makes no document of it; warnings and hints are printed and let through.
//
//   node .ci/asyncapi/validate.cjs docs/asyncapi.json
"use strict";

const fs = require("node:fs");
const path = require("node:path");
const { Parser, fromFile, DiagnosticSeverity } = require("@asyncapi/parser");

const SEVERITY = {
  [DiagnosticSeverity.Error]: "error",
  [DiagnosticSeverity.Warning]: "warning",
  [DiagnosticSeverity.Information]: "info",
  [DiagnosticSeverity.Hint]: "hint",
};

async function main() {
  const file = process.argv[2];
  if (!file) {
    console.error("usage: validate.cjs ASYNCAPI_DOCUMENT");
    return 2;
  }
  if (!fs.existsSync(file)) {
    console.error(`${file}: no such file`);
    return 2;
  }
  const parser = new Parser();
  const { document, diagnostics } = await fromFile(parser, path.resolve(file)).parse();
  let errors = 0;
  for (const d of diagnostics) {
    const severity = SEVERITY[d.severity] ?? String(d.severity);
    if (d.severity === DiagnosticSeverity.Error) errors += 1;
    const at = d.path && d.path.length ? `/${d.path.join("/")}` : "/";
    console.log(`${file}: ${severity}: ${at}: ${d.message} (${d.code})`);
  }
  if (errors > 0 || !document) {
    console.error(`${file}: not a valid AsyncAPI document (${errors} error(s))`);
    return 1;
  }
  const warnings = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Warning).length;
  console.log(
    `${file}: valid AsyncAPI ${document.version()} (${document.channels().length} channels, ` +
      `${document.allMessages().length} messages, ${warnings} warning(s))`,
  );
  return 0;
}

main().then(
  (code) => process.exit(code),
  (e) => {
    console.error(`validate.cjs: ${e && e.stack ? e.stack : e}`);
    process.exit(1);
  },
);
