// The type declarations against the runtime: test/types/check.ts (what the
// README shows, and misuse marked @ts-expect-error) compiles with
// `tsc --strict`, and src/index.d.ts declares exactly the values
// src/index.js exports and exactly GateClient's members.

import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

import * as runtime from '../src/index.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const ts = require('typescript');

// One program, compiled as `tsc --strict --module nodenext --lib es2022,dom` would.
const program = ts.createProgram([path.join(here, 'types', 'check.ts')], {
  strict: true,
  noEmit: true,
  target: ts.ScriptTarget.ES2022,
  module: ts.ModuleKind.NodeNext,
  moduleResolution: ts.ModuleResolutionKind.NodeNext,
  lib: ['lib.es2022.d.ts', 'lib.dom.d.ts'],
  types: ['node'],
});

test('tsc --strict accepts the documented uses and refuses misuse', () => {
  const diagnostics = ts.getPreEmitDiagnostics(program);
  const host = { getCanonicalFileName: (f) => f, getCurrentDirectory: () => here, getNewLine: () => '\n' };
  assert.equal(diagnostics.length, 0, ts.formatDiagnostics(diagnostics, host));
});

test('index.d.ts declares what index.js exports', () => {
  const file = path.join(here, '..', 'src', 'index.d.ts');
  const checker = program.getTypeChecker();
  const module = checker.getSymbolAtLocation(program.getSourceFile(file));
  const values = checker
    .getExportsOfModule(module)
    .filter((s) => s.flags & ts.SymbolFlags.Value)
    .map((s) => s.name)
    .sort();
  assert.deepEqual(values, Object.keys(runtime).sort());

  // GateClient's members, instance and static.
  const gate = checker.getExportsOfModule(module).find((s) => s.name === 'GateClient');
  const instance = checker.getDeclaredTypeOfSymbol(gate);
  const declared = checker.getPropertiesOfType(instance).map((s) => s.name).sort();
  const proto = Object.getOwnPropertyNames(runtime.GateClient.prototype).filter((n) => n !== 'constructor').sort();
  assert.deepEqual(declared, proto);
  const statics = checker
    .getPropertiesOfType(checker.getTypeOfSymbolAtLocation(gate, gate.valueDeclaration))
    .map((s) => s.name)
    .filter((n) => n !== 'prototype')
    .sort();
  const runtimeStatics = Object.getOwnPropertyNames(runtime.GateClient)
    .filter((n) => !['length', 'name', 'prototype'].includes(n))
    .sort();
  assert.deepEqual(statics, runtimeStatics);
});
