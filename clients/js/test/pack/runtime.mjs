// Loaded by pack.test.mjs inside the scratch project: the packed packages
// resolve as ES modules and export what their types say.
import assert from "node:assert/strict";
import * as client from "@wsedge/client";
import * as react from "@wsedge/react";
import * as server from "@wsedge/server";

assert.equal(typeof client.RealtimeClient, "function");
assert.equal(client.default, client.RealtimeClient);
assert.equal(client.backoffDelay(0, 1000, 30000, () => 0), 1000);
assert.equal(new client.StreamOffsets().accept("@all", 1), true);
assert.equal(typeof react.useRealtime, "function");
assert.equal(typeof server.WsedgeServer, "function");
assert.equal(typeof server.broadcast, "function");
console.log("runtime imports ok");
