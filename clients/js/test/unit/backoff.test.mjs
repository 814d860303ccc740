// The reconnect delay formula and the terminal close codes.
import { test } from "node:test";
import assert from "node:assert/strict";
import { backoffDelay, isTerminalCloseCode } from "@wsedge/client";

test("delay = min(base · 2^min(attempt, 6) + jitter, cap)", () => {
  const noJitter = () => 0;
  assert.deepEqual(
    [0, 1, 2, 3, 4, 5, 6, 7, 10].map((a) => backoffDelay(a, 1000, 30_000, noJitter)),
    [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000],
  );
  // Without the cap the exponent stops at 6: 64 × base.
  assert.equal(backoffDelay(6, 10, 1e9, noJitter), 640);
  assert.equal(backoffDelay(20, 10, 1e9, noJitter), 640);
});

test("the jitter adds up to one second, and the cap includes it", () => {
  assert.equal(backoffDelay(0, 1000, 30_000, () => 0.5), 1500);
  assert.equal(backoffDelay(0, 1000, 30_000, () => 0.9999), 1999);
  assert.equal(backoffDelay(4, 1000, 30_000, () => 0.9999), 16999);
  assert.equal(backoffDelay(5, 1000, 30_000, () => 0.9999), 30000);
  for (let i = 0; i < 200; i++) {
    const d = backoffDelay(1, 1000, 30_000);
    assert.ok(d >= 2000 && d < 3000, `attempt 1 gave ${d}`);
  }
});

test("odd attempts are read as 0", () => {
  assert.equal(backoffDelay(-3, 1000, 30_000, () => 0), 1000);
  assert.equal(backoffDelay(Number.NaN, 1000, 30_000, () => 0), 1000);
  assert.equal(backoffDelay(1.7, 1000, 30_000, () => 0), 2000);
});

test("4500-4999 are terminal, the rest are not", () => {
  for (const code of [4500, 4501, 4999]) assert.equal(isTerminalCloseCode(code), true, String(code));
  for (const code of [1000, 1001, 1006, 4000, 4001, 4499, 5000]) assert.equal(isTerminalCloseCode(code), false, String(code));
});
