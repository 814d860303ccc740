/**
 * `RealtimeTest`: the original service's test component rebuilt on
 * `useRealtime`: connection state, connection count, whether the last
 * reconnect recovered what was missed, an error banner,
 * connect/disconnect, a send form, the list of received messages and a
 * button that asks the backend for a test notification.
 */

import { useEffect, useState, type FormEvent } from "react";
import { useRealtime, type RealtimeMessage } from "@wsedge/react";

export interface RealtimeTestProps {
  token: string | null;
  url?: string;
  getToken?: () => Promise<string>;
  reconnectInterval?: number;
}

interface Entry {
  id: number;
  at: number;
  type: string;
  payload: unknown;
  synthetic: boolean;
}

const MAX_MESSAGES = 100;
let nextId = 1;

export function RealtimeTest({ token, url, getToken, reconnectInterval }: RealtimeTestProps) {
  const rt = useRealtime(token, { url, getToken, reconnectInterval, debug: false });
  const [messages, setMessages] = useState<Entry[]>([]);
  const [userId, setUserId] = useState<string | null>(null);

  useEffect(() => {
    const offAll = rt.on("*", (payload: unknown, msg: RealtimeMessage) => {
      const entry = { id: nextId++, at: Date.now(), type: msg.type, payload, synthetic: msg.synthetic === true };
      setMessages((list) => [entry, ...list].slice(0, MAX_MESSAGES));
    });
    const offHello = rt.on("connected", (p: { userId?: string }) => setUserId(p.userId ?? null));
    return () => {
      offAll();
      offHello();
    };
  }, [rt.on]);

  const state = rt.isConnected ? "connected" : rt.isConnecting ? "connecting" : "disconnected";
  return (
    <>
      <section aria-labelledby="h-state">
        <h2 id="h-state">Connection</h2>
        <div className="stats">
          <span id="state" className="pill" data-state={state} role="status">
            {state}
          </span>
          <span>
            connections: <b id="connection-count">{rt.connectionCount}</b>
          </span>
          <span>
            user: <b id="user-id">{userId ?? "—"}</b>
          </span>
          <span title="Whether the last reconnect got every message missed meanwhile (false: reload your data)">
            recovered: <b id="recovered">{rt.recovered === null ? "—" : String(rt.recovered)}</b>
          </span>
        </div>
        {rt.error && (
          <p id="error" className="banner" role="alert">
            {rt.error}
          </p>
        )}
        <div className="row">
          <button id="connect" type="button" onClick={rt.connect} disabled={rt.isConnected || rt.isConnecting}>
            Connect
          </button>
          <button id="disconnect" type="button" className="secondary" onClick={rt.disconnect}>
            Disconnect
          </button>
          <TestNotificationButton />
        </div>
      </section>
      <SendForm send={rt.send} disabled={!rt.isConnected} />
      <MessageList messages={messages} clear={() => setMessages([])} />
    </>
  );
}

function SendForm({ send, disabled }: { send: (type: string, payload?: unknown) => boolean; disabled: boolean }) {
  const [type, setType] = useState("test");
  const [payload, setPayload] = useState('{"hello":"world"}');
  const [problem, setProblem] = useState<string | null>(null);
  const submit = (ev: FormEvent) => {
    ev.preventDefault();
    try {
      send(type.trim() || "test", payload.trim() ? JSON.parse(payload) : null);
      setProblem(null);
    } catch (e) {
      setProblem(`payload: ${(e as Error).message}`);
    }
  };
  return (
    <section aria-labelledby="h-send">
      <h2 id="h-send">Send a message</h2>
      <form id="send-form" onSubmit={submit}>
        <label htmlFor="msg-type">Type</label>
        <input id="msg-type" value={type} onChange={(e) => setType(e.target.value)} />
        <label htmlFor="msg-payload">Payload (JSON)</label>
        <textarea id="msg-payload" rows={2} value={payload} onChange={(e) => setPayload(e.target.value)} />
        {problem && <p className="banner">{problem}</p>}
        <div className="row">
          <button id="send" type="submit" disabled={disabled}>
            Send
          </button>
        </div>
      </form>
    </section>
  );
}

/** Asks the example backend, which calls wsedge through @wsedge/server. */
function TestNotificationButton() {
  const [result, setResult] = useState("");
  const click = async () => {
    try {
      const res = await fetch("/api/test-notification", { method: "POST" });
      const body = (await res.json()) as { sentToConnections?: number; error?: string };
      setResult(res.ok ? `sent to ${body.sentToConnections} connection(s)` : `failed: ${body.error}`);
    } catch (e) {
      setResult(`failed: ${(e as Error).message}`);
    }
  };
  return (
    <>
      <button id="test-notification" type="button" className="secondary" onClick={click}>
        Send test notification
      </button>
      <span id="test-notification-result">{result}</span>
    </>
  );
}

function MessageList({ messages, clear }: { messages: Entry[]; clear: () => void }) {
  return (
    <section aria-labelledby="h-messages">
      <div className="row" style={{ marginTop: 0, justifyContent: "space-between" }}>
        <h2 id="h-messages" style={{ margin: 0 }}>
          Messages ({messages.length})
        </h2>
        <button type="button" className="secondary" onClick={clear}>
          Clear
        </button>
      </div>
      <ul id="messages">
        {messages.map((m) => (
          <li key={m.id} data-type={m.type} data-synthetic={String(m.synthetic)} data-at={m.at}>
            <time>{new Date(m.at).toLocaleTimeString()}</time> <span className="type">{m.type}</span>
            <code>{JSON.stringify(m.payload)}</code>
          </li>
        ))}
      </ul>
    </section>
  );
}
