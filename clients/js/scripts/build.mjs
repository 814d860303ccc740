// Builds the JavaScript packages of clients/js and the files made from them:
//
//   packages/*/dist/index.js     esbuild: one ES module per package (dependencies left external)
//   packages/*/dist/*.d.ts       tsc: type declarations (and the type check)
//   ../../src/web/realtime.js    esbuild: @wsedge/client as the one file wsedge serves at GET /realtime.js
//   examples/react-page/dist/    esbuild: the React example page, React bundled from npm
//
//   node scripts/build.mjs               build everything (writes src/web/realtime.js)
//   node scripts/build.mjs --check-web   build everything but realtime.js, then fail when the
//                                        committed src/web/realtime.js differs from a fresh build
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const WEB_SCRIPT = path.resolve(ROOT, "../../src/web/realtime.js");
const TSC = path.join(ROOT, "node_modules/.bin/tsc");
const checkOnly = process.argv.includes("--check-web");

const WEB_BANNER = `// realtime.js: wsedge's browser client, served at GET /realtime.js (docs/PROTOCOL.md §6.3).
// GENERATED from clients/js/packages/client (@wsedge/client) by \`npm run build\` in clients/js.
// Do not edit: change the TypeScript sources; scripts/js-test fails when this file is stale.
`;

/** Options every bundle shares; `absWorkingDir` keeps the path comments in the output stable. */
const common = {
  absWorkingDir: ROOT,
  bundle: true,
  format: "esm",
  target: "es2022",
  charset: "utf8",
  legalComments: "inline",
  logLevel: "warning",
};

const packages = [
  { dir: "packages/client", entry: "src/index.ts", platform: "neutral", external: [] },
  { dir: "packages/server", entry: "src/index.ts", platform: "node", external: [] },
  {
    dir: "packages/react",
    entry: "src/index.ts",
    platform: "neutral",
    external: ["react", "react/jsx-runtime", "@wsedge/client"],
  },
];

function tsc(project) {
  execFileSync(TSC, ["-p", path.join(ROOT, project)], { stdio: "inherit" });
}

/** The served browser client: the client package in one file, with its banner. */
async function webScript() {
  const out = await esbuild.build({
    ...common,
    entryPoints: ["packages/client/src/index.ts"],
    platform: "browser",
    write: false,
    banner: { js: WEB_BANNER },
  });
  return out.outputFiles[0].text;
}

async function main() {
  for (const pkg of packages) {
    tsc(pkg.dir); // declarations first: the react package's types import the client's
    await esbuild.build({
      ...common,
      entryPoints: [path.join(pkg.dir, pkg.entry)],
      outfile: path.join(pkg.dir, "dist/index.js"),
      platform: pkg.platform,
      packages: "external",
      external: pkg.external,
    });
  }
  tsc("examples/react-page"); // type check only (noEmit)
  await esbuild.build({
    ...common,
    entryPoints: ["examples/react-page/src/main.tsx"],
    outfile: "examples/react-page/dist/app.js",
    platform: "browser",
    jsx: "automatic",
    define: { "process.env.NODE_ENV": '"production"' },
    minify: true,
  });

  const fresh = await webScript();
  if (checkOnly) {
    const committed = readFileSync(WEB_SCRIPT, "utf8");
    if (committed !== fresh) {
      console.error(
        `src/web/realtime.js is stale: it differs from a fresh build of @wsedge/client.\n` +
          `Run \`npm run build\` in clients/js and commit src/web/realtime.js.`,
      );
      process.exit(1);
    }
    console.log("src/web/realtime.js matches a fresh build of @wsedge/client");
  } else {
    writeFileSync(WEB_SCRIPT, fresh);
    console.log(`built the packages, the example and ${path.relative(process.cwd(), WEB_SCRIPT)}`);
  }
}

await main();
