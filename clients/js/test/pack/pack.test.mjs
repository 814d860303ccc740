// `npm pack` of each package, installed into a scratch project (outside the
// workspace) whose TypeScript imports each package's types (consumer.ts,
// `tsc --noEmit`, strict, NodeNext resolution, library types checked too),
// and whose Node imports each package at run time (runtime.mjs).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { JS_ROOT } from "../support/wsedge.mjs";

const HERE = path.join(JS_ROOT, "test/pack");
const PACKAGES = ["client", "react", "server"];
const NPM_TIMEOUT_MS = 300_000;
let scratch;
const tarballs = {};

function run(cmd, args, cwd, timeout = NPM_TIMEOUT_MS) {
  return execFileSync(cmd, args, { cwd, timeout, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
}

before(() => {
  scratch = mkdtempSync(path.join(tmpdir(), "wsedge-pack-"));
  mkdirSync(path.join(scratch, "tarballs"));
});
after(() => rmSync(scratch, { recursive: true, force: true }));

test("each package packs with its build output and type declarations", () => {
  for (const name of PACKAGES) {
    const out = run("npm", ["pack", "--json", "--pack-destination", path.join(scratch, "tarballs")], path.join(JS_ROOT, "packages", name));
    const [info] = JSON.parse(out);
    assert.equal(info.name, `@wsedge/${name}`);
    const files = info.files.map((f) => f.path);
    for (const f of ["package.json", "README.md", "dist/index.js", "dist/index.d.ts"]) assert.ok(files.includes(f), `${info.name} lacks ${f}: ${files}`);
    assert.ok(!files.some((f) => f.startsWith("src/")), `${info.name} ships its sources`);
    tarballs[name] = path.join(scratch, "tarballs", info.filename);
  }
});

test("a scratch project installs the tarballs, type-checks against them and imports them", () => {
  const root = JSON.parse(readFileSync(path.join(JS_ROOT, "package.json"), "utf8"));
  const dev = root.devDependencies;
  const project = path.join(scratch, "consumer");
  mkdirSync(project);
  writeFileSync(
    path.join(project, "package.json"),
    JSON.stringify({
      name: "wsedge-consumer",
      private: true,
      type: "module",
      dependencies: {
        "@wsedge/client": `file:${tarballs.client}`,
        "@wsedge/react": `file:${tarballs.react}`,
        "@wsedge/server": `file:${tarballs.server}`,
        react: dev.react,
        ws: dev.ws,
      },
      devDependencies: Object.fromEntries(
        ["typescript", "@types/node", "@types/react", "@types/ws"].map((k) => [k, dev[k]]),
      ),
    }),
  );
  writeFileSync(
    path.join(project, "tsconfig.json"),
    JSON.stringify({
      compilerOptions: {
        target: "ES2022",
        module: "NodeNext",
        moduleResolution: "NodeNext",
        lib: ["ES2022", "DOM"],
        types: ["node"],
        jsx: "react-jsx",
        strict: true,
        noEmit: true,
        skipLibCheck: false,
      },
      files: ["consumer.ts"],
    }),
  );
  copyFileSync(path.join(HERE, "consumer.ts"), path.join(project, "consumer.ts"));
  copyFileSync(path.join(HERE, "runtime.mjs"), path.join(project, "runtime.mjs"));
  // The packages were fetched by `npm ci` in the workspace: the cache serves them.
  run("npm", ["install", "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error"], project);
  try {
    run(path.join(project, "node_modules/.bin/tsc"), ["-p", "."], project);
  } catch (e) {
    assert.fail(`tsc --noEmit failed in the scratch project:\n${e.stdout}${e.stderr}`);
  }
  assert.match(run(process.execPath, ["runtime.mjs"], project), /runtime imports ok/);
});
