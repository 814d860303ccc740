// Real processes for the SDK and browser tests: the wsedge binary (and the
// example backend) on free loopback ports, tokens for them, bounded waits.
//
//   WSEDGE_BIN   the server binary (default: ../../target/debug/wsedge from clients/js)
//
// Every process started here is killed by stop() in the tests' `after`
// hooks and, as a last resort, when the test process exits.
import { spawn } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const JS_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const REPO_ROOT = path.resolve(JS_ROOT, "../..");
/** Upper bound of any single wait. */
export const WAIT_MS = 15_000;

export function wsedgeBin() {
  const bin = path.resolve(REPO_ROOT, process.env.WSEDGE_BIN || "target/debug/wsedge");
  if (!existsSync(bin)) throw new Error(`no wsedge binary at ${bin}: run cargo build --bin wsedge or set WSEDGE_BIN`);
  return bin;
}

/** An HS256 JWT: `sub`, `exp` `ttl` seconds from now, and `extra` claims. */
export function mintToken(secret, sub, ttl = 3600, extra = {}) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const unsigned = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub, iat: now, exp: now + ttl, ...extra })}`;
  return `${unsigned}.${createHmac("sha256", secret).update(unsigned).digest("base64url")}`;
}

export const randomSecret = () => randomBytes(24).toString("hex");

const live = new Set();
process.on("exit", () => {
  for (const p of live) p.kill("SIGKILL");
});

/**
 * Spawns `cmd args` and resolves once a line of its output matches `ready`
 * (the match is returned with the process). Rejects if it exits first or
 * does not get ready within WAIT_MS.
 */
export async function startProcess(cmd, args, { env, ready, name }) {
  const proc = spawn(cmd, args, { env, stdio: ["ignore", "pipe", "pipe"] });
  live.add(proc);
  const p = { proc, name, output: "" };
  p.exited = new Promise((resolve) => proc.once("exit", (code, signal) => resolve({ code, signal })));
  p.exited.then(() => live.delete(proc));
  const match = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => done(new Error(`${name} not ready within ${WAIT_MS} ms`)), WAIT_MS);
    const onData = (chunk) => {
      p.output = (p.output + chunk).slice(-64 * 1024); // always drained; the tail is kept
      const m = ready.exec(p.output);
      if (m) done(null, m);
    };
    const onExit = (code, signal) => done(new Error(`${name} exited early (code ${code}, signal ${signal})`));
    function done(err, m) {
      clearTimeout(timer);
      proc.off("exit", onExit);
      if (err) {
        proc.kill("SIGKILL");
        reject(new Error(`${err.message}\n--- ${name} output ---\n${p.output}`));
      } else resolve(m);
    }
    proc.stdout.setEncoding("utf8").on("data", onData);
    proc.stderr.setEncoding("utf8").on("data", onData);
    proc.once("exit", onExit);
  });
  return { ...p, match };
}

/** SIGTERM, then SIGKILL when it has not exited within WAIT_MS. Resolves {code, signal}. */
export async function stop(p) {
  if (!p || p.proc.exitCode !== null || p.proc.signalCode !== null) return p?.exited;
  p.proc.kill("SIGTERM");
  let timer;
  const res = await Promise.race([p.exited, new Promise((r) => (timer = setTimeout(r, WAIT_MS, null)))]);
  clearTimeout(timer);
  if (res) return res;
  p.proc.kill("SIGKILL");
  return p.exited;
}

/**
 * Starts wsedge with `secret` and `adminKey` on `bind` (default a free
 * loopback port). Resolves with {proc, addr, port, httpUrl, wsUrl, …}.
 */
export async function startWsedge({ secret, adminKey, bind = "127.0.0.1:0", args = [] }) {
  const env = { ...process.env, RUST_LOG: "info", JWT_SECRET: secret };
  for (const k of Object.keys(env)) if (k.startsWith("WSEDGE_")) delete env[k];
  const argv = ["--bind", bind, "--shards", "2", "--admin-key", adminKey, ...args];
  const p = await startProcess(wsedgeBin(), argv, { env, ready: /wsedge listening on (\S+)/, name: "wsedge" });
  const addr = p.match[1];
  const port = Number(addr.slice(addr.lastIndexOf(":") + 1));
  return { ...p, addr, port, httpUrl: `http://${addr}`, wsUrl: `ws://${addr}/ws` };
}

/** Polls `check` (sync or async) every 20 ms until it returns a truthy value; throws after `ms`. */
export async function eventually(what, check, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      const v = await check();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`not within ${ms} ms: ${what}${last ? ` (last error: ${last.message})` : ""}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * Resolves with the next `(payload, message)` of `type` on `client` (a
 * RealtimeClient), or rejects after `ms`.
 */
export function nextEvent(client, type, ms = WAIT_MS, filter = () => true) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no "${type}" event within ${ms} ms`));
    }, ms);
    const off = client.on(type, (payload, message) => {
      if (!filter(payload, message)) return;
      clearTimeout(timer);
      off();
      resolve({ payload, message, at: Date.now() });
    });
  });
}
