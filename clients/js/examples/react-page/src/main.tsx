/**
 * The example page: a signed-in user (the token comes from the example
 * backend's /api/token) and the `RealtimeTest` component. The demo controls
 * switch the user (a new token: the hook reconnects) and mount or unmount
 * the component (unmounting closes the socket).
 */

import { StrictMode, useCallback, useEffect, useRef, useState } from "react";
import { createRoot } from "react-dom/client";
import { RealtimeTest } from "./RealtimeTest.js";

const params = new URLSearchParams(location.search);
const wsUrl = document.querySelector<HTMLMetaElement>('meta[name="wsedge-url"]')?.content || undefined;
/** The example's tests shorten the backoff base; 1000 ms (the hook's default) otherwise. */
const reconnectInterval = Number(params.get("reconnectInterval")) || undefined;

async function fetchToken(user: string): Promise<string> {
  const res = await fetch(`/api/token?user=${encodeURIComponent(user)}`);
  if (!res.ok) throw new Error(`/api/token: HTTP ${res.status}`);
  return ((await res.json()) as { token: string }).token;
}

function App() {
  const [user, setUser] = useState(params.get("user") || "demo-user");
  const [draft, setDraft] = useState(user);
  const [token, setToken] = useState<string | null>(null);
  const [mounted, setMounted] = useState(true);
  const userRef = useRef(user);
  userRef.current = user;

  useEffect(() => {
    let live = true;
    fetchToken(user).then((t) => live && setToken(t), () => live && setToken(null));
    return () => {
      live = false;
    };
  }, [user]);
  // Reconnects and refreshes ask the backend for a fresh token of the current user.
  const getToken = useCallback(() => fetchToken(userRef.current), []);

  return (
    <main>
      <h1>wsedge: useRealtime example</h1>
      <section aria-labelledby="h-demo">
        <h2 id="h-demo">Demo controls</h2>
        <label htmlFor="user">User id (the example backend issues its token)</label>
        <input id="user" value={draft} onChange={(e) => setDraft(e.target.value)} />
        <div className="row">
          <button id="switch-user" type="button" onClick={() => setUser(draft.trim() || "demo-user")}>
            Sign in as this user
          </button>
          <button id="toggle-mount" type="button" className="secondary" onClick={() => setMounted((m) => !m)}>
            {mounted ? "Unmount RealtimeTest" : "Mount RealtimeTest"}
          </button>
          <span id="mounted">{mounted ? "mounted" : "unmounted"}</span>
        </div>
      </section>
      {mounted && <RealtimeTest token={token} url={wsUrl} getToken={getToken} reconnectInterval={reconnectInterval} />}
    </main>
  );
}

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <App />
  </StrictMode>,
);
