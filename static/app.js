'use strict';
// Browser client for the chat service. Plain JS, no build step.
// All user-supplied text goes through textContent, never innerHTML.
(() => {
  // ---------- constants & helpers ----------
  const ROOM_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
  const DEFAULT_ROOM = 'general';
  const REPLY_TIMEOUT_MS = 15000;
  const TYPING_SEND_MS = 2000;   // throttle for our own `typing` commands
  const TYPING_SHOW_MS = 3000;   // how long "X is typing…" stays
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 15000;
  // SPEC §12: after this many WebSocket opens failed in a row (a WebSocket
  // that ended before it opened), the page switches to SSE.
  const WS_FAILED_OPENS_BEFORE_SSE = 2;
  const WS_OPEN_TIMEOUT_MS = 10000; // an upgrade unanswered this long is a failed open
  // Commands queued while a POST is in flight go in one body, up to about
  // this many bytes: below the server's Chat.MaxFrameBytes (32 KiB by
  // default), which every valid single command fits.
  const SSE_BODY_BYTES = 16384;
  const HISTORY_PAGE = 50;
  const DIRECTORY_REFRESH_MS = 20000;
  // A large room (SPEC §15) may hold thousands of users: the member list
  // renders this many names at first, and "Show more" adds as many again.
  const MEMBERS_SHOWN = 100;
  const MEMBERS_PAGE = 200;      // users asked for per `members` page when showing more
  const MEMBERS_PAGES_PER_CLICK = 5;
  // Failures where we cannot know if the server got the message: safe to
  // resend automatically with the same idempotency key after reconnecting.
  const CONN_ERRORS = new Set(['offline', 'disconnected', 'timeout']);
  // Refusals that sending the same text again cannot fix.
  const NO_RETRY = new Set(['invalid_text', 'forbidden']);
  // Codes whose friendly label says it all; the server's detail would only add noise.
  const LABEL_ONLY = new Set([...CONN_ERRORS, 'rate_limited']);
  const FRIENDLY = {
    rate_limited: 'Not sent: rate limited, retry in a moment',
    invalid_text: 'Message rejected',
    unavailable: 'Service unavailable',
    not_member: 'You are not in this room',
    too_many_rooms: 'Too many rooms joined',
    invalid_room: 'Invalid room name',
    unauthorized: 'Not authorized',
    offline: 'Not delivered (offline)',
    disconnected: 'Not delivered (connection lost)',
    timeout: 'Not delivered (no reply from server)',
    too_large: 'Not sent: too large',
    forbidden: 'Private room: no access',
  };
  // SPEC §13: a room the server joined us to (an admin granted access) shows a lock.
  const LOCK_LABEL = 'private room, added by the server';
  const SESSION_EXPIRED = 'Your session expired: reload the page with a new token';

  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = String(text);
    return e;
  };
  const cpLen = (s) => [...s].length; // Unicode code points, like the server counts
  const randomKey = () => {
    const b = new Uint8Array(16);
    crypto.getRandomValues(b);
    return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  };
  const fmtTime = (ts) => new Date(ts).toLocaleTimeString();
  const fmtCount = (n) => n.toLocaleString();
  const collator = new Intl.Collator();
  // The server sorts users by code point (UTF-8 bytes), and `members` pages
  // (`after`) follow that order. JavaScript's < compares UTF-16 units, which
  // put U+E000..U+FFFF above the surrogates of astral code points; shifting
  // both ranges gives code-point order.
  function cmpUser(a, b) {
    const n = Math.min(a.length, b.length);
    for (let i = 0; i < n; i++) {
      let x = a.charCodeAt(i), y = b.charCodeAt(i);
      if (x === y) continue;
      x = x >= 0xE000 ? x - 0x800 : x >= 0xD800 ? x + 0x2000 : x;
      y = y >= 0xE000 ? y - 0x800 : y >= 0xD800 ? y + 0x2000 : y;
      return x - y;
    }
    return a.length - b.length;
  }
  const codedError = (code, message) => Object.assign(new Error(message || code), { code });
  function errText(e, room) {
    if (e.code === 'user_offline') return `${room && room.peer ? room.peer : 'User'} is offline`;
    const label = FRIENDLY[e.code];
    if (!label) return e.message || e.code || 'Error';
    return e.message && e.message !== e.code && !LABEL_ONLY.has(e.code) ? `${label}: ${e.message}` : label;
  }
  // localStorage can throw (privacy mode, quotas): never let that break the page.
  const load = (k) => { try { return localStorage.getItem(k); } catch { return null; } };
  const store = (k, v) => { try { localStorage.setItem(k, v); } catch { /* ignore */ } };

  // ---------- state ----------
  const S = {
    name: '',
    token: null,
    transport: null,        // the open or opening transport (see openWebSocket, openSSE)
    sse: false,             // use SSE instead of WebSocket; never reset (see onClosed)
    wsFailedOpens: 0,       // WebSocket opens failed in a row
    conn: 'offline',        // offline | connecting | online | reconnecting
    connNote: '',           // why we are offline, shown in #status
    everOnline: false,      // got a welcome since this name was picked?
    attempt: 0,
    retryTimer: null,
    retryAt: 0,
    countdown: null,
    me: null, client: null, node: null,
    limits: { maxText: 0, maxRooms: 0, rate: 0 },
    nextId: 1,
    pending: new Map(),     // command id -> {resolve, reject, timer}
    rooms: new Map(),       // 'general' or '@alice' -> room object (insertion order = sidebar order)
    current: null,
    directory: [],          // [{room, members}] from the `rooms` command
    lastTypingSent: 0,
    noticeSeq: 0,
    forceScroll: false,
    focusAfterJoin: false,  // the name form was just submitted
  };

  function makeRoom(key) {
    const dm = key.startsWith('@'); // room names cannot start with '@', so no clash
    return {
      key, dm, peer: dm ? key.slice(1) : null,
      joined: dm, joining: false,
      locked: false,               // first seen through `subscribed` (SPEC §13): shows a lock
      epoch: null, lastSeq: 0,     // last (epoch, seq) seen, for `since` on re-join
      items: [], keys: new Set(),  // confirmed messages + notices, sorted; keys dedupe
      outbox: [],                  // our pending / failed sends, shown after items
      unread: 0, noOlder: false, loadingOlder: false,
      // Presence. `count` is the number of users present, as the server
      // counts them; `members` (user -> connections) the ones the page knows.
      // In a small room they agree. In a large one `members` is a part of
      // the room: the first page of `members` plus what presence events
      // named, so the count is never taken from it.
      members: new Map(), count: 0,
      pageFrom: null,       // the next `members` page starts after this user (null: at the first)
      showLimit: MEMBERS_SHOWN, loadingMembers: false,
      sorted: null,         // display order of `members`, made again after each change
      memberEls: new Map(), // user -> rendered <li>, reused between renders
      typing: new Map(), membersTimer: null, draft: '', li: null,
    };
  }

  // Rooms are ordered by seq, DMs by timestamp. Notices carry the order of the
  // item before them plus a positive `sub`, so they stay where they were shown.
  // Keys include the epoch: seqs restart when a room's history is reset.
  const msgItem = (m) => ({ kind: 'msg', key: `s${m.epoch}:${m.seq}`, order: m.seq, sub: 0, seq: m.seq, epoch: m.epoch,
    id: m.id, from: m.from, text: m.text, ts: m.ts, el: null });
  // SPEC §14: `offline` marks a direct that waited in the server's store
  // while we had no connection; `stored`, one of ours that the server kept
  // for a peer with no connection.
  const dmItem = (d) => ({ kind: 'msg', key: 'd' + d.id, order: d.ts, sub: 0, seq: null, id: d.id,
    from: d.from, text: d.text, ts: d.ts, offline: d.offline === true, stored: d.stored === true, el: null });
  const cmpItems = (a, b) => a.order - b.order || a.sub - b.sub;

  function addItem(room, item) {
    if (item.key) {
      if (room.keys.has(item.key)) return false; // already shown: never twice
      room.keys.add(item.key);
    }
    // Insertion step: new items nearly always belong at the end, so this is cheap.
    const list = room.items;
    let i = list.length;
    list.push(item);
    while (i > 0 && cmpItems(list[i - 1], item) > 0) { list[i] = list[i - 1]; i--; }
    list[i] = item;
    return true;
  }

  function addNotice(room, text, ts = Date.now()) {
    const last = room.items[room.items.length - 1];
    const order = room.dm ? ts : (last ? last.order : 0);
    addItem(room, { kind: 'notice', key: null, order, sub: ++S.noticeSeq, text, ts, el: null });
  }

  function maxSeq(room) {
    for (let i = room.items.length - 1; i >= 0; i--) if (room.items[i].seq != null) return room.items[i].seq;
    return 0;
  }

  // ---------- transports ----------
  // A transport carries protocol lines between the page and the server: a
  // WebSocket, or (SPEC §12) an SSE stream for events with HTTP POSTs for
  // commands. Both have this shape, so that the request/reply bookkeeping
  // (ids, pending replies, timeouts, idempotency keys) does not know which
  // one it talks through:
  //   kind        'WebSocket' or 'SSE' (the status pill shows it)
  //   open        true while commands can be sent (SSE: from its welcome on)
  //   send(text)  newline-separated commands; a Promise that rejects with a
  //               coded error when they did not reach the server (an SSE POST
  //               refused with 413, 429, 503...). Replies come as events.
  //   close()     ends it; no callback follows
  // and the callbacks connect() sets right after making it (never called
  // before that, nor after close() or onclose):
  //   onopen()                          it opened (WebSocket) or welcomed (SSE)
  //   onmessage(events)                 one frame's (SSE: one message's) events, in order
  //   onclose({code, reason, opened})   it ended by itself, with a WebSocket close
  //                                     code; `opened` is false when it never opened

  // One frame or SSE message holds one or more JSON objects separated by newlines.
  function parseLines(data) {
    const events = [];
    for (const line of data.split('\n')) {
      if (!line.trim()) continue;
      let ev;
      try { ev = JSON.parse(line); } catch { console.warn('chat: bad JSON line', line); continue; }
      if (ev && typeof ev === 'object') events.push(ev);
    }
    return events;
  }

  function openWebSocket(query) {
    const t = { kind: 'WebSocket', onopen: null, onmessage: null, onclose: null };
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    let ws = null, opened = false, ended = false, openTimer = null;
    const detach = () => {
      ended = true;
      clearTimeout(openTimer);
      if (ws) ws.onopen = ws.onmessage = ws.onclose = null;
    };
    const end = (code, reason) => {
      if (ended) return;
      detach();
      t.onclose({ code, reason: reason || '', opened });
    };
    Object.defineProperty(t, 'open', { get: () => opened && !ended && ws.readyState === 1 }); // 1: OPEN
    t.send = (text) => {
      try { ws.send(text); } catch (e) { return Promise.reject(codedError('disconnected', 'connection lost')); }
      return Promise.resolve();
    };
    t.close = () => {
      if (ended) return;
      detach();
      if (ws) ws.close(1000);
    };
    try {
      ws = new WebSocket(proto + '//' + location.host + '/ws?' + query);
    } catch (e) {
      // A WebSocket that cannot even be made is a failed open, told later like any other.
      setTimeout(() => end(1006, String(e && e.message || e)), 0);
      return t;
    }
    // A network that blocks WebSockets may hold the upgrade instead of refusing it.
    openTimer = setTimeout(() => { const s = ws; end(1006, 'no answer to the upgrade'); s.close(); }, WS_OPEN_TIMEOUT_MS);
    ws.onopen = () => { opened = true; clearTimeout(openTimer); t.onopen(); };
    ws.onmessage = (ev) => { if (typeof ev.data === 'string') t.onmessage(parseLines(ev.data)); };
    ws.onclose = (ev) => end(ev.code, ev.reason);
    return t;
  }

  // openSSE: GET /sse is the stream of events; its welcome names the session,
  // and commands are POSTed to /api/sessions/:session/commands with the
  // session's key. Replies and errors come back on the stream.
  function openSSE(query) {
    const t = { kind: 'SSE', open: false, onopen: null, onmessage: null, onclose: null };
    let session = '', sessionKey = '', ended = false, posting = false;
    const queue = []; // {text, resolve, reject}: commands waiting for the POST in flight
    const es = new EventSource('/sse?' + query);
    const drop = (reason) => {
      ended = true;
      t.open = false;
      es.onmessage = es.onerror = null;
      es.close();
      for (const q of queue.splice(0)) q.reject(codedError('disconnected', reason));
    };
    const end = (code, reason) => {
      if (ended) return;
      drop('connection lost');
      t.onclose({ code, reason: reason || '', opened: !!session });
    };
    t.close = () => { if (!ended) drop('connection closed'); };

    // An EventSource reconnects by itself after an error, but that makes a
    // new session that has joined no room and whose key the page lacks: it
    // is closed instead, and the page reconnects with its own backoff and
    // resumes its rooms with `since`, exactly as after a WebSocket drop.
    es.onerror = () => end(1006, 'stream lost');
    es.onmessage = (ev) => {
      if (ended) return;
      const events = parseLines(typeof ev.data === 'string' ? ev.data : '');
      // The server's last event ends the session with a WebSocket close code.
      const i = events.findIndex((e) => e.type === 'close');
      const closing = i >= 0 ? events.splice(i)[0] : null;
      if (!session) {
        const w = events.find((e) => e.type === 'welcome');
        if (w) {
          if (typeof w.session !== 'string' || !w.session || typeof w.sessionKey !== 'string' || !w.sessionKey) {
            end(1002, 'welcome without a session'); // commands would have nowhere to go
            return;
          }
          session = w.session;
          sessionKey = w.sessionKey;
          t.open = true;
          t.onopen();
        }
      }
      if (events.length) t.onmessage(events);
      if (closing) end(typeof closing.code === 'number' ? closing.code : 1006, closing.reason);
    };

    t.send = (text) => new Promise((resolve, reject) => {
      if (!t.open) { reject(codedError('offline', 'not connected')); return; }
      queue.push({ text, resolve, reject });
      if (!posting) postQueued();
    });

    // One POST at a time keeps the commands in the order they were sent;
    // whatever queued up meanwhile goes out together in the next body.
    async function postQueued() {
      posting = true;
      while (queue.length && !ended) {
        let n = 0, bytes = 0;
        while (n < queue.length && (n === 0 || bytes + queue[n].text.length * 3 <= SSE_BODY_BYTES)) {
          bytes += queue[n].text.length * 3 + 1; // UTF-16 units to UTF-8 bytes: at most 3 each
          n++;
        }
        const batch = queue.splice(0, n);
        const outcome = await postCommands(batch.map((q) => q.text).join('\n'));
        if (outcome === 'accepted') batch.forEach((q) => q.resolve());
        else if (outcome === 'lost') {
          end(1006, 'session lost');
          batch.forEach((q) => q.reject(codedError('disconnected', 'connection lost')));
        } else batch.forEach((q) => q.reject(outcome));
      }
      posting = false;
    }

    // postCommands answers 'accepted', 'lost' (the session is gone or not
    // ours, or the server could not be reached: reconnect, and what was not
    // confirmed is resent with its key after the re-join), or the coded
    // error the commands fail with, as if the server had refused them.
    async function postCommands(body) {
      let res;
      try {
        res = await fetch('/api/sessions/' + encodeURIComponent(session) + '/commands', {
          method: 'POST',
          headers: { 'X-Session-Key': sessionKey, 'Content-Type': 'text/plain' },
          body,
          cache: 'no-store',
          credentials: 'same-origin',
        });
      } catch {
        return 'lost';
      }
      let info = {};
      try { info = await res.json(); } catch { /* no JSON body */ }
      if (res.ok) return 'accepted'; // 202 {"accepted": N}
      if (res.status === 403 || res.status === 404) return 'lost';
      const code = info && typeof info.code === 'string' ? info.code
        : res.status === 413 ? 'too_large' : res.status === 429 ? 'rate_limited' : 'unavailable';
      return codedError(code, info && typeof info.message === 'string' ? info.message : `HTTP ${res.status}`);
    }
    return t;
  }

  // ---------- connection ----------
  const transportName = () => (S.sse ? 'SSE' : 'WebSocket');

  function setConn(state) {
    S.conn = state;
    clearInterval(S.countdown);
    S.countdown = null;
    // tick the "reconnecting in Ns" text while we wait
    if (state === 'reconnecting' && S.retryTimer) S.countdown = setInterval(renderStatus, 1000);
    $('status-live').textContent = state === 'offline' ? state : `${state} · ${transportName()}`;
    renderAll();
  }

  function connect() {
    clearTimeout(S.retryTimer);
    S.retryTimer = null;
    let query = 'name=' + encodeURIComponent(S.name);
    if (S.token) query += '&token=' + encodeURIComponent(S.token);
    setConn(S.everOnline ? 'reconnecting' : 'connecting');
    const t = S.sse ? openSSE(query) : openWebSocket(query);
    S.transport = t;
    // Callbacks check S.transport === t so a transport we abandoned cannot touch state.
    t.onopen = () => { if (S.transport === t && t.kind === 'WebSocket') S.wsFailedOpens = 0; };
    t.onmessage = (events) => { if (S.transport === t) onEvents(events); };
    t.onclose = (ev) => { if (S.transport === t) onClosed(t, ev); };
  }

  function onClosed(t, ev) {
    S.transport = null;
    failAllPending('disconnected', 'connection lost');
    for (const r of S.rooms.values()) {
      if (!r.dm) { r.joined = false; r.joining = false; }
      r.typing.clear();
    }
    if (ev.code === 4003) {
      // Kicked: reconnecting would just fight the admin.
      S.connNote = 'You were disconnected by an administrator';
      toast(S.connNote);
      setConn('offline');
      return;
    }
    if (ev.code === 4001) {
      // Token expired (SPEC §13): the same token would be refused (401), so
      // only a reload with a new one helps; no automatic reconnect.
      S.connNote = 'session expired, reload with a new token';
      toast(SESSION_EXPIRED, 'error', 0); // stays: it is what to do next
      setConn('offline');
      return;
    }
    const failedOpen = t.kind === 'WebSocket' && !ev.opened;
    let fellBack = false;
    if (failedOpen && ++S.wsFailedOpens >= WS_FAILED_OPENS_BEFORE_SSE) {
      // WebSockets look blocked on this network: SSE from now on, for the
      // rest of the page's life. Trying WebSockets again later would cost
      // failed opens (each up to WS_OPEN_TIMEOUT_MS) on every later
      // reconnect, for no gain that the user could see. A reload starts
      // with WebSockets again.
      S.sse = true;
      fellBack = true;
    }
    if (!S.everOnline) {
      if (failedOpen) {
        // The WebSocket, not the name, may be what the network refuses: try
        // it once more, then SSE at once. Only a failure there says the name
        // (or the token) is the likely cause.
        if (fellBack) connect();
        else scheduleReconnect('connecting');
        return;
      }
      // A bad name is refused with HTTP 400, which looks like any failed connection.
      S.connNote = 'could not connect';
      toast('Could not connect. Check your name or pick another one.');
      setConn('offline');
      $('name-input').focus();
      return;
    }
    if (ev.code === 4008) toast('Connection too slow; reconnecting');
    else if ([1003, 1007, 1009].includes(ev.code)) toast(`Connection closed (protocol error ${ev.code}); reconnecting`);
    scheduleReconnect();
  }

  function scheduleReconnect(state = 'reconnecting') {
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** S.attempt);
    // Jitter spreads out many clients reconnecting after the same outage.
    const delay = base / 2 + Math.random() * (base / 2);
    S.attempt++;
    S.retryAt = Date.now() + delay;
    S.retryTimer = setTimeout(connect, delay);
    setConn(state);
  }

  // Start over with a (new) name: drop the old connection and all room state.
  // The transport stays: once on SSE, the page stays on SSE.
  function startSession(name) {
    if (S.transport) { const old = S.transport; S.transport = null; old.close(); }
    clearTimeout(S.retryTimer);
    S.retryTimer = null;
    failAllPending('disconnected', 'connection replaced');
    for (const r of S.rooms.values()) { clearTimeout(r.membersTimer); r.typing.forEach(clearTimeout); }
    S.rooms.clear();
    S.current = null;
    S.me = null;
    S.everOnline = false;
    S.attempt = 0;
    S.wsFailedOpens = 0;
    S.connNote = '';
    S.name = name;
    $('composer').value = '';
    connect();
  }

  // ---------- commands ----------
  function cmd(type, payload = {}) {
    const t = S.transport;
    if (!t || !t.open) return Promise.reject(codedError('offline', 'not connected'));
    const id = S.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        S.pending.delete(id);
        reject(codedError('timeout', 'no reply from server'));
      }, REPLY_TIMEOUT_MS);
      S.pending.set(id, { resolve, reject, timer });
      // A command that did not reach the server fails as a reply with that error would.
      t.send(JSON.stringify({ type, id, ...payload })).catch((e) => {
        const p = S.pending.get(id);
        if (!p) return; // answered, timed out, or failed with the connection already
        S.pending.delete(id);
        clearTimeout(p.timer);
        p.reject(e);
      });
    });
  }

  // Fire-and-forget command (no id, so no reply).
  function fire(type, payload = {}) {
    const t = S.transport;
    if (t && t.open) t.send(JSON.stringify({ type, ...payload })).catch(() => {});
  }

  function failAllPending(code, message) {
    const all = [...S.pending.values()];
    S.pending.clear();
    for (const p of all) { clearTimeout(p.timer); p.reject(codedError(code, message)); }
  }

  // ---------- incoming events ----------
  function onEvents(events) {
    for (const ev of events) {
      try { dispatch(ev); } catch (e) { console.error('chat: handler failed', ev, e); }
    }
    renderAll(); // once per frame, not per event
  }

  function dispatch(ev) {
    switch (ev.type) {
      case 'reply': return onReply(ev);
      case 'welcome': return onWelcome(ev);
      case 'message': return onMessage(ev);
      case 'direct': return onDirect(ev);
      case 'joined':
      case 'left': return onPresence(ev);
      case 'presence': return onPresenceDiff(ev);
      case 'typing': return onTyping(ev);
      case 'subscribed': return onSubscribed(ev);
      case 'removed': return onRemoved(ev);
      case 'resync': {
        const room = S.rooms.get(ev.room);
        if (room && !room.dm) joinRoom(room.key);
        return;
      }
      case 'notice': {
        const room = S.rooms.get(ev.room || S.current);
        if (room) addNotice(room, ev.text, ev.ts || Date.now());
        else toast(ev.text, 'info');
        return;
      }
      case 'error':
        // Only fire-and-forget commands (typing) fail without an id; a dropped
        // typing hint is not worth an alert.
        if (ev.code === 'rate_limited') return console.debug('chat: typing hint rate limited');
        return toast(errText(ev));
      default: console.debug('chat: unknown event', ev);
    }
  }

  function onReply(ev) {
    const p = S.pending.get(ev.id);
    if (!p) return; // timed out already
    S.pending.delete(ev.id);
    clearTimeout(p.timer);
    if (ev.error) p.reject(codedError(ev.error.code, ev.error.message));
    else p.resolve(ev.result || {});
  }

  function onWelcome(w) {
    S.me = w.user;
    S.client = w.client;
    S.node = w.node;
    S.limits = { ...S.limits, ...(w.limits || {}) };
    S.attempt = 0;
    S.connNote = '';
    const first = !S.everOnline;
    S.everOnline = true;
    setConn('online');
    if (first) {
      // Quiet: where the default room is private, a refusal on every visit would only be noise.
      joinRoom(DEFAULT_ROOM, !S.current, true).then(() => {
        // Someone who just picked a name wants to type next, not to stay in
        // the name field (unless they went somewhere else meanwhile).
        const a = document.activeElement;
        if (S.focusAfterJoin && (!a || a === document.body || a.closest('#name-form'))) focusComposer();
        S.focusAfterJoin = false;
      });
    }
    else for (const r of S.rooms.values()) if (!r.dm) joinRoom(r.key); // with `since`
    refreshDirectory();
  }

  // subscribed (SPEC §13): an admin granted us a private room and the server
  // joined this connection to it. The event holds what a join reply holds,
  // and is taken as one: history, members, and the (epoch, seq) that a
  // re-join after a reconnect resumes from with `since`.
  function onSubscribed(ev) {
    if (typeof ev.room !== 'string' || !ROOM_RE.test(ev.room)) return;
    let room = S.rooms.get(ev.room);
    const isNew = !room;
    if (isNew) {
      room = makeRoom(ev.room);
      room.locked = true;
      S.rooms.set(ev.room, room);
    }
    applyJoin(room, ev, false);
    if (!isNew) return; // already listed: a fresh view of it is all that changes
    if (!S.current) switchRoom(room.key);
    toast(`You were added to the private room #${room.key}`, 'info');
    refreshDirectory();
  }

  // removed (SPEC §13): an admin revoked our access and the server took this
  // connection out of the room. As a leave, without sending one; the room is
  // gone from the list, so a reconnect does not re-join it.
  function onRemoved(ev) {
    const room = typeof ev.room === 'string' ? S.rooms.get(ev.room) : null;
    if (!room || room.dm) return;
    dropRoom(room.key);
  }

  // dropRoom forgets a room we lost access to (removed, or a re-join answered
  // `forbidden`) and says so.
  function dropRoom(key) {
    removeRoom(key);
    toast(`You were removed from #${key}`, 'info');
    refreshDirectory();
  }

  function onMessage(m) {
    const room = S.rooms.get(m.room);
    if (!room || room.dm) return;
    if (!room.joining && room.epoch != null && m.epoch !== room.epoch) {
      // The room's history was reset: seqs are not comparable, re-join for a fresh
      // view (its history will include this message). While a join is in flight we
      // keep the message instead: applyJoin sorts out which epoch wins.
      joinRoom(room.key);
      return;
    }
    if (room.joined && room.lastSeq && m.seq > room.lastSeq + 1) fillGap(room, room.lastSeq, m.seq);
    room.lastSeq = Math.max(room.lastSeq, m.seq);
    if (m.from === S.me) {
      // Our own message may arrive before the send reply: drop the pending copy.
      // If it was another tab's, our reply still adds ours by seq, so nothing is lost.
      const i = room.outbox.findIndex((o) => o.key === m.id || (o.status === 'pending' && o.text === m.text));
      if (i >= 0) room.outbox.splice(i, 1);
    }
    clearTyping(room, m.from);
    if (addItem(room, msgItem(m)) && m.from !== S.me && room.key !== S.current) room.unread++;
  }

  // Fetch messages we skipped (seq jumped); merging dedupes by seq.
  function fillGap(room, fromSeq, toSeq) {
    cmd('history', { room: room.key, before: toSeq, limit: Math.min(100, toSeq - fromSeq - 1) })
      .then((r) => { (r.messages || []).forEach((m) => addItem(room, msgItem(m))); renderAll(); })
      .catch(() => { /* a later resync or re-join covers it */ });
  }

  // A direct with `offline: true` (SPEC §14) waited in the store while we had
  // no connection: it comes right after the welcome, oldest first, each once,
  // and is taken like a live one (its ts, from when it was sent, orders it).
  function onDirect(d) {
    const peer = d.from === S.me ? d.to : d.from; // from me = copy from another tab
    const room = ensureDM(peer);
    if (addItem(room, dmItem(d)) && d.from !== S.me && room.key !== S.current) room.unread++;
  }

  // joined/left: one per connection, in a room within the server's
  // Chat.PresenceEventLimit. Shown at once, then confirmed by `members`
  // (which also knows how many connections each user has).
  function onPresence(ev) {
    const room = S.rooms.get(ev.room);
    if (!room) return;
    if (ev.type === 'left' && ev.user === S.me && ev.client === S.client) {
      room.joined = false;
      addNotice(room, 'You are no longer in this room');
    }
    const n = room.members.get(ev.user);
    if (ev.type === 'joined' && n == null) {
      room.members.set(ev.user, 1);
      room.count++;
    }
    if (ev.type === 'left') {
      clearTyping(room, ev.user);
      if (n > 1) room.members.set(ev.user, n - 1);
      else if (n === 1) { room.members.delete(ev.user); room.count = Math.max(0, room.count - 1); }
    }
    room.sorted = null;
    refreshMembers(room);
  }

  // presence: a large room's users that came and went since the last one,
  // and the exact count. The lists are net (joined users were not there
  // before), so they explain the count's move, unless they were cut at 100
  // names or an event was lost: then users the page never heard of are
  // present, anywhere in the order, and the next page is read from the start.
  // (A joined user the page knows already, such as itself just after its
  // join reply, is in the count it has.)
  function onPresenceDiff(ev) {
    const room = S.rooms.get(ev.room);
    if (!room || room.dm || typeof ev.count !== 'number') return;
    const joined = (ev.joined || []).filter((u) => !room.members.has(u));
    const left = ev.left || [];
    if (room.count + joined.length - left.length !== ev.count) room.pageFrom = null;
    for (const u of joined) room.members.set(u, 1);
    for (const u of left) { room.members.delete(u); clearTyping(room, u); }
    room.count = ev.count;
    room.sorted = null;
    // More names than users: some that left went unnamed, and only a fresh
    // read can tell which. Once, after the burst, not per event.
    if (room.members.size > room.count && !room.membersTimer) refreshMembers(room, true, 1000 + Math.random() * 2000);
  }

  function onTyping(ev) {
    const room = S.rooms.get(ev.room);
    if (!room || ev.user === S.me) return;
    clearTimeout(room.typing.get(ev.user));
    room.typing.set(ev.user, setTimeout(() => { room.typing.delete(ev.user); renderTyping(); }, TYPING_SHOW_MS));
  }

  function clearTyping(room, user) {
    clearTimeout(room.typing.get(user));
    room.typing.delete(user);
  }

  // Presence events come in bursts; ask for the authoritative list once.
  // The first page (the whole of a small room); `fresh` forgets every name
  // it does not cover instead of keeping what presence events taught.
  function refreshMembers(room, fresh = false, delay = 250) {
    clearTimeout(room.membersTimer);
    room.membersTimer = setTimeout(() => {
      room.membersTimer = null;
      cmd('members', { room: room.key })
        .then((r) => { if (S.rooms.get(room.key) === room) { applyFirstPage(room, r, fresh); renderAll(); } })
        .catch(() => {});
    }, delay);
  }

  // A `members` or `join` result: the first page of users, and their count.
  function applyFirstPage(room, r, fresh) {
    const list = r.members || [];
    const count = typeof r.count === 'number' ? r.count : list.length; // an older server sends no count
    applyMembers(room, list, count, null, list.length >= count, fresh);
  }

  // applyMembers merges one page of users (sorted by the server) that starts
  // after the user `after` (null: at the first). The page is the truth about
  // the users it spans, from `after` to its last user, or to the end when
  // it is the last page; names outside that span stay as presence events
  // left them, unless `fresh`.
  function applyMembers(room, list, count, after, end, fresh) {
    end = end || !list.length;
    const last = list.length ? list[list.length - 1].user : after;
    for (const user of room.members.keys()) {
      const inSpan = (after == null || cmpUser(user, after) > 0) && (end || cmpUser(user, last) <= 0);
      if (fresh || inSpan) room.members.delete(user);
    }
    for (const m of list) room.members.set(m.user, m.connections || 1);
    room.count = count;
    room.pageFrom = end ? null : last;
    room.sorted = null;
  }

  // "Show more": render MEMBERS_SHOWN more names, reading `members` pages
  // until the page knows enough of them (a few pages per click at most).
  async function showMoreMembers(room) {
    if (room.loadingMembers) return;
    const button = $('members-show-more');
    const hadFocus = document.activeElement === button;
    const shown = Math.min(room.showLimit, room.members.size);
    if (shown >= room.showLimit) room.showLimit += MEMBERS_SHOWN;
    const want = () => Math.min(room.showLimit, room.count);
    if (room.members.size < want()) {
      room.loadingMembers = true;
      renderAll();
      try {
        for (let i = 0; i < MEMBERS_PAGES_PER_CLICK && room.members.size < want(); i++) {
          const after = room.pageFrom;
          const r = await cmd('members', after == null ? { room: room.key, limit: MEMBERS_PAGE } : { room: room.key, limit: MEMBERS_PAGE, after });
          if (S.rooms.get(room.key) !== room) break;
          const list = r.members || [];
          const end = list.length < MEMBERS_PAGE;
          applyMembers(room, list, typeof r.count === 'number' ? r.count : room.count, after, end, false);
          if (end) break;
        }
      } catch (e) {
        toast(`Members of ${room.key}: ${errText(e)}`);
      } finally {
        room.loadingMembers = false;
      }
    }
    renderAll();
    // Everyone is listed and the button is gone: keep a keyboard user where the list ends.
    if (hadFocus && $('members-more').hidden) {
      const last = $('members').lastElementChild;
      const target = last && last.querySelector('button');
      if (target) target.focus();
    }
  }

  function refreshDirectory() {
    cmd('rooms').then((r) => { S.directory = r.rooms || []; renderAll(); }).catch(() => {});
  }

  // ---------- room actions ----------
  // Join, or re-join with `since` (last epoch/seq seen) so the server sends only what we missed.
  // `quiet`: a private room's refusal of a first join is not worth telling (the default room).
  function joinRoom(name, show = false, quiet = false) {
    let room = S.rooms.get(name);
    const isNew = !room;
    if (isNew) { room = makeRoom(name); S.rooms.set(name, room); }
    const back = S.current; // where a refused first join goes back to
    if (show) switchRoom(name);
    if (room.joining || (show && room.joined)) return Promise.resolve();
    const since = room.epoch != null ? { epoch: room.epoch, seq: room.lastSeq } : null;
    room.joining = true;
    renderAll();
    return cmd('join', since ? { room: name, since } : { room: name })
      .then((r) => {
        if (S.rooms.get(name) === room) applyJoin(room, r, !!since);
        if (isNew) refreshDirectory();
      })
      .catch((e) => {
        room.joining = false;
        if (CONN_ERRORS.has(e.code) && !isNew) return; // the next reconnect re-joins
        if (e.code === 'forbidden') {
          // A private room (SPEC §13). One we were in has lost its grant
          // (revoked while we were offline): as if we had been removed.
          if (S.rooms.get(name) !== room) return; // left, or removed, meanwhile
          if (!isNew) { dropRoom(name); return; }
          removeRoom(name);
          if (back !== name && S.rooms.has(back) && S.current !== back) switchRoom(back);
          if (!quiet) showJoinError(`#${name} is a private room: you need an invitation to join it`);
          return;
        }
        if (isNew) removeRoom(name);
        toast(`Could not join ${name}: ${errText(e)}`);
      })
      .finally(renderAll);
  }

  function applyJoin(room, r, hadSince) {
    room.joining = false;
    room.joined = true;
    applyFirstPage(room, r, true);
    const hist = (r.history || []).map(msgItem);
    if (hadSince && r.recovered) {
      hist.forEach((it) => addItem(room, it)); // only what we missed; dedupe by seq
    } else {
      // Fresh view. Keep messages newer than the join point: they arrived
      // while the join was in flight and are not in `history`.
      const keep = room.items.filter((it) => it.kind === 'msg' && it.epoch === r.epoch && it.seq > r.seq);
      room.items = [];
      room.keys.clear();
      hist.concat(keep).forEach((it) => addItem(room, it));
      room.noOlder = hist.length === 0 || hist[0].seq <= 1;
      if (hadSince) {
        // Above the reloaded messages: it explains why what was above them is gone.
        const first = room.items[0];
        addItem(room, { kind: 'notice', key: null, order: first ? first.order - 1 : 0, sub: ++S.noticeSeq,
          text: r.epoch !== room.epoch
            ? 'The room restarted; earlier messages are no longer available'
            : 'Reconnected after a long gap; showing the latest messages',
          ts: Date.now(), el: null });
      }
    }
    room.epoch = r.epoch;
    room.lastSeq = Math.max(r.seq || 0, maxSeq(room));
    // Sends cut off by a disconnect: resend with the same key (server dedupes).
    room.outbox.filter((o) => o.status === 'failed' && o.autoRetry).forEach((o) => sendOut(room, o).catch(() => {}));
  }

  function ensureDM(peer) {
    const key = '@' + peer;
    if (!S.rooms.has(key)) S.rooms.set(key, makeRoom(key));
    return S.rooms.get(key);
  }

  function removeRoom(key) {
    const room = S.rooms.get(key);
    if (!room) return;
    clearTimeout(room.membersTimer);
    room.typing.forEach(clearTimeout);
    S.rooms.delete(key);
    if (S.current === key) {
      S.current = null;
      const next = S.rooms.keys().next();
      if (!next.done) switchRoom(next.value);
      else $('composer').value = '';
    }
  }

  function leaveCurrent() {
    const room = S.rooms.get(S.current);
    if (!room) return;
    if (room.dm) { removeRoom(room.key); renderAll(); return; }
    // Remove locally regardless, so a later reconnect does not re-join it.
    cmd('leave', { room: room.key })
      .catch((e) => { if (e.code !== 'not_member' && e.code !== 'offline') toast(`Leave ${room.key}: ${errText(e)}`); })
      .finally(() => { removeRoom(room.key); refreshDirectory(); renderAll(); });
  }

  function switchRoom(key) {
    const composer = $('composer');
    const old = S.rooms.get(S.current);
    if (old) old.draft = composer.value; // keep half-written text per room
    S.current = key;
    const room = S.rooms.get(key);
    if (room) { room.unread = 0; composer.value = room.draft || ''; }
    S.forceScroll = true;
  }

  // ---------- sending ----------
  function validateText(text) {
    if (!text.trim()) return 'Message is empty';
    const max = S.limits.maxText;
    if (max && cpLen(text) > max) return `Message is too long (${cpLen(text)} / ${max})`;
    return null;
  }

  function sendText(text) {
    const room = S.rooms.get(S.current);
    if (!room) return Promise.reject(codedError('not_member', 'join a room first'));
    const problem = validateText(text);
    if (problem) return Promise.reject(codedError('invalid_text', problem));
    // The key is fixed per message so a retry cannot create a duplicate.
    const o = { kind: 'out', key: randomKey(), text, ts: Date.now(), status: 'pending', error: '', autoRetry: false, el: null };
    room.outbox.push(o);
    S.forceScroll = true;
    return sendOut(room, o);
  }

  function sendOut(room, o) {
    Object.assign(o, { status: 'pending', error: '', autoRetry: false, el: null });
    renderAll();
    const p = room.dm
      ? cmd('direct', { to: room.peer, text: o.text })
      : cmd('send', { room: room.key, text: o.text, key: o.key });
    return p.then((r) => {
      const i = room.outbox.indexOf(o);
      if (i >= 0) room.outbox.splice(i, 1);
      // Replace the pending entry by the confirmed one; if the `message`
      // event came first, addItem sees the same seq and skips it. A direct
      // to a peer with no connection comes back `stored` when the server
      // has a store (SPEC §14): it reaches them when they next connect.
      addItem(room, room.dm
        ? dmItem({ id: 'local-' + o.key, from: S.me, to: room.peer, text: o.text, ts: r.ts || Date.now(), stored: r.stored })
        : msgItem({ seq: r.seq, epoch: room.epoch, from: S.me, text: o.text, ts: r.ts || Date.now() }));
      renderAll();
      return r;
    }, (e) => {
      Object.assign(o, { status: 'failed', error: errText(e, room), autoRetry: !room.dm && CONN_ERRORS.has(e.code),
        canRetry: !NO_RETRY.has(e.code), el: null });
      renderAll();
      throw e;
    });
  }

  function maybeSendTyping() {
    const room = S.rooms.get(S.current);
    if (!room || room.dm || !room.joined || !$('composer').value.trim()) return;
    const now = Date.now();
    if (now - S.lastTypingSent < TYPING_SEND_MS) return;
    S.lastTypingSent = now;
    fire('typing', { room: room.key });
  }

  // ---------- rendering ----------
  function renderAll() {
    renderStatus();
    renderRooms();
    renderDirectory();
    renderHeader();
    renderMessages();
    renderMembers();
    renderTyping();
    renderComposer();
  }

  function renderStatus() {
    let text;
    if (S.conn === 'online') text = `online as ${S.me}`;
    else if (S.conn === 'connecting') text = 'connecting…';
    else if (S.conn === 'reconnecting') {
      const secs = Math.ceil((S.retryAt - Date.now()) / 1000);
      text = S.retryTimer && secs > 0 ? `reconnecting in ${secs}s…` : 'reconnecting…';
    } else text = S.connNote ? `offline: ${S.connNote}` : 'offline';
    const s = $('status');
    s.textContent = text;
    s.dataset.state = S.conn;
    $('status-pill').dataset.state = S.conn;
    const transport = $('transport');
    transport.textContent = transportName();
    transport.hidden = S.conn === 'offline'; // nothing is carried then
    // Once connected, the name form is only for changing the name; phones fold it away.
    const connected = S.conn !== 'offline';
    document.body.classList.toggle('connected', connected);
    $('connect').textContent = connected ? 'Change name' : 'Connect';
    $('rename').hidden = !connected;
    $('rename').setAttribute('aria-expanded', String($('name-form').classList.contains('open')));
  }

  function renderRooms() {
    const ul = $('rooms');
    // Rooms first, then direct conversations; each keeps its join order (sort is stable).
    const rooms = [...S.rooms.values()].sort((a, b) => a.dm - b.dm);
    const nodes = rooms.map((r) => {
      if (!r.li) {
        r.li = el('li', 'room-item');
        r.li.dataset.room = r.key;
        const b = el('button', 'room-btn');
        b.type = 'button';
        const name = el('span', 'name');
        if (!r.dm) name.append(el('span', 'hash', '#'));
        name.append(document.createTextNode(r.key)); // DMs are already '@alice'
        b.append(name);
        if (r.locked) b.append(lockEl());
        b.append(el('span', 'count'), el('span', 'unread'));
        b.addEventListener('click', () => { switchRoom(r.key); renderAll(); focusComposer(); });
        r.li.append(b);
      }
      const b = r.li.firstChild;
      const count = r.dm ? '' : fmtCount(r.count);
      b.querySelector('.count').textContent = count;
      b.querySelector('.count').title = r.dm ? '' : 'members';
      const unread = b.querySelector('.unread');
      unread.textContent = r.unread ? String(r.unread) : '';
      unread.hidden = !r.unread;
      const current = r.key === S.current;
      r.li.classList.toggle('current', current);
      r.li.classList.toggle('inactive', !r.joined);
      if (current) b.setAttribute('aria-current', 'true'); else b.removeAttribute('aria-current');
      b.setAttribute('aria-label', `${r.dm ? 'Direct messages with ' + r.peer : 'Room ' + r.key}` +
        `${r.locked ? ', ' + LOCK_LABEL : ''}${r.dm ? '' : ', ' + count + ' members'}${r.unread ? ', ' + r.unread + ' unread' : ''}`);
      return r.li;
    });
    reconcile(ul, nodes);
  }

  // lockEl marks a room the server added us to (#room-lock is the same in
  // the header). A drawn padlock, not the 🔒 emoji: not every system has a
  // font for it.
  function lockEl() {
    const s = el('span', 'lock');
    s.setAttribute('role', 'img');
    s.setAttribute('aria-label', LOCK_LABEL);
    s.title = 'Private room, added by the server';
    const NS = 'http://www.w3.org/2000/svg';
    const svg = document.createElementNS(NS, 'svg');
    for (const [k, v] of [['viewBox', '0 0 16 16'], ['width', '1em'], ['height', '1em'], ['aria-hidden', 'true'], ['focusable', 'false']]) svg.setAttribute(k, v);
    const shackle = document.createElementNS(NS, 'path');
    for (const [k, v] of [['d', 'M5 7.5V5a3 3 0 0 1 6 0v2.5'], ['fill', 'none'], ['stroke', 'currentColor'], ['stroke-width', '1.7']]) shackle.setAttribute(k, v);
    const body = document.createElementNS(NS, 'rect');
    for (const [k, v] of [['x', '2.5'], ['y', '7'], ['width', '11'], ['height', '8'], ['rx', '1.6'], ['fill', 'currentColor']]) body.setAttribute(k, v);
    svg.append(shackle, body);
    s.append(svg);
    return s;
  }

  // On phones, focusing would pop up the keyboard over the messages just opened.
  function focusComposer() {
    const c = $('composer');
    if (!c.disabled && window.matchMedia('(min-width: 721px)').matches) c.focus();
  }

  function renderDirectory() {
    const ul = $('directory');
    ul.textContent = '';
    for (const d of S.directory) {
      if (S.rooms.has(d.room)) continue;
      const li = el('li', 'room-item');
      li.dataset.dirRoom = d.room;
      const b = el('button', 'room-btn');
      b.type = 'button';
      const name = el('span', 'name');
      name.append(el('span', 'hash', '#'), document.createTextNode(d.room));
      b.append(name, el('span', 'count', d.members));
      b.setAttribute('aria-label', `Join room ${d.room}, ${d.members} members`);
      b.addEventListener('click', () => joinRoom(d.room, true));
      li.append(b);
      ul.append(li);
    }
    document.querySelector('.directory-title').hidden = !ul.children.length;
  }

  function renderHeader() {
    const room = S.rooms.get(S.current);
    $('room-title').textContent = !room ? 'No room' : room.dm ? `@${room.peer}` : `#${room.key}`;
    $('room-lock').hidden = !(room && room.locked);
    const leave = $('leave');
    leave.disabled = !room;
    leave.textContent = room && room.dm ? 'Close' : 'Leave';
    const older = $('load-older');
    older.hidden = !room || room.dm;
    older.disabled = !room || room.noOlder || room.loadingOlder || !room.joined;
    older.textContent = room && room.noOlder ? `Beginning of #${room.key}` : room && room.loadingOlder ? 'Loading…' : 'Load older messages';
    older.classList.toggle('at-start', !!(room && room.noOlder));
  }

  function renderMessages() {
    const list = $('messages');
    const room = S.rooms.get(S.current);
    const nearBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
    const items = room ? room.items.concat(room.outbox) : [];
    reconcile(list, items.map((it) => it.el || (it.el = buildItem(room, it))));
    if (S.forceScroll || nearBottom) list.scrollTop = list.scrollHeight;
    S.forceScroll = false;
  }

  // Put exactly `nodes` into `parent` in order, reusing existing elements so
  // the aria-live region only announces what is actually new.
  function reconcile(parent, nodes) {
    nodes.forEach((n, i) => {
      if (parent.children[i] !== n) parent.insertBefore(n, parent.children[i] || null);
    });
    while (parent.children.length > nodes.length) parent.lastElementChild.remove();
  }

  function buildItem(room, it) {
    if (it.kind === 'notice') {
      const li = el('li', 'notice');
      li.append(el('span', 'text', it.text), el('time', null, fmtTime(it.ts)));
      return li;
    }
    const out = it.kind === 'out';
    const from = out ? S.me : it.from;
    const li = el('li', 'msg');
    li.classList.toggle('mine', from === S.me);
    if (out) li.classList.add(it.status); // 'pending' or 'failed'
    li.dataset.room = room.key;
    li.dataset.from = from || '';
    li.dataset.seq = it.seq != null ? String(it.seq) : '';
    if (out) li.dataset.key = it.key;
    const meta = el('div', 'meta');
    const time = el('time', null, fmtTime(it.ts));
    time.dateTime = new Date(it.ts).toISOString();
    meta.append(el('span', 'from', from === S.me ? `${from} (you)` : from), time);
    if (out && it.status === 'pending') meta.append(el('span', 'state', 'sending…'));
    if (it.offline) {
      li.classList.add('offline');
      const away = el('span', 'away', 'sent while you were away');
      away.title = 'The server kept this message until you connected';
      meta.append(away);
    }
    li.append(meta, el('div', 'text', it.text));
    if (it.stored) {
      li.classList.add('stored');
      li.append(el('div', 'stored-note', `Delivered when ${room.peer} connects`));
    }
    if (out && it.status === 'failed') {
      const err = el('div', 'error');
      err.append(el('span', 'error-text', it.error));
      if (it.canRetry !== false) {
        const retry = el('button', 'retry', 'Retry');
        retry.type = 'button';
        retry.addEventListener('click', () => sendOut(room, it).catch(() => {}));
        err.append(retry);
      }
      const discard = el('button', 'discard', 'Discard');
      discard.type = 'button';
      discard.setAttribute('aria-label', 'Discard this unsent message');
      discard.addEventListener('click', () => {
        const i = room.outbox.indexOf(it);
        if (i >= 0) room.outbox.splice(i, 1);
        renderAll();
        focusComposer();
      });
      err.append(discard);
      li.append(err);
    }
    return li;
  }

  // The member list renders at most room.showLimit names (you first, then by
  // name), never a room of 10,000: the rest is one line, "and N more".
  function renderMembers() {
    const ul = $('members');
    const room = S.rooms.get(S.current);
    let nodes = [];
    let more = 0;
    if (room && room.dm) {
      nodes = [...new Set([room.peer, S.me])].map((u) => memberEl(room, u, 1)); // a DM to yourself is one
    } else if (room) {
      if (!room.sorted) {
        room.sorted = [...room.members.keys()].sort((a, b) => (b === S.me) - (a === S.me) || collator.compare(a, b));
      }
      const shown = room.sorted.slice(0, room.showLimit);
      nodes = shown.map((u) => memberEl(room, u, room.members.get(u)));
      more = room.count - shown.length;
      // Elements of users no longer shown are dropped, so the cache stays as small as the list.
      const keep = new Set(shown);
      for (const u of room.memberEls.keys()) if (!keep.has(u)) room.memberEls.delete(u);
    }
    reconcile(ul, nodes); // keeps the elements, and so the focus, of users still shown
    $('member-count').textContent = room && !room.dm ? `(${fmtCount(room.count)})` : '';
    const box = $('members-more');
    box.hidden = !(more > 0);
    if (more > 0) {
      $('members-more-text').textContent = `and ${fmtCount(more)} more`;
      // Not disabled while loading: that would take the focus away from it.
      const b = $('members-show-more');
      b.setAttribute('aria-busy', String(room.loadingMembers));
      b.textContent = room.loadingMembers ? 'Loading…' : 'Show more';
    }
  }

  // memberEl is a member's <li>, made once and reused while it is shown.
  function memberEl(room, user, connections) {
    const me = user === S.me;
    let li = room.memberEls.get(user);
    if (!li || li.dataset.me !== String(me)) { // a guest's name changes on reconnect
      li = el('li', 'member');
      li.dataset.user = user;
      li.dataset.me = String(me);
      const label = el(me ? 'span' : 'button', 'member-name');
      label.append(el('span', 'dot'), el('span', 'user', user));
      if (me) label.append(el('span', 'you', '(you)'));
      else {
        label.type = 'button';
        label.title = `Send a direct message to ${user}`;
        label.addEventListener('click', () => { ensureDM(user); switchRoom('@' + user); renderAll(); $('composer').focus(); });
      }
      li.append(label);
      room.memberEls.set(user, li);
    }
    let c = li.querySelector('.conns');
    if (connections > 1) { // several tabs or devices
      if (!c) { c = el('span', 'conns'); li.append(c); }
      c.textContent = String(connections);
      c.title = `${connections} connections`;
      c.setAttribute('aria-label', c.title);
    } else if (c) c.remove();
    return li;
  }

  function renderTyping() {
    const room = S.rooms.get(S.current);
    const names = room ? [...room.typing.keys()] : [];
    let text = '';
    if (names.length === 1) text = `${names[0]} is typing…`;
    else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
    else if (names.length > 2) text = `${names[0]}, ${names[1]} and ${names.length - 2} more are typing…`;
    $('typing').textContent = text;
  }

  function renderComposer() {
    const c = $('composer');
    const room = S.rooms.get(S.current);
    const n = cpLen(c.value);
    const max = S.limits.maxText;
    const over = !!max && n > max;
    const count = $('char-count');
    count.textContent = max ? `${n} / ${max}` : String(n);
    count.classList.toggle('over', over);
    c.classList.toggle('over', over);
    c.setAttribute('aria-invalid', over ? 'true' : 'false');
    c.disabled = !room;
    $('send').disabled = !room || over;
    c.placeholder = !room ? 'Join a room to chat' : room.dm ? `Message @${room.peer}` : `Message #${room.key}`;
    // grow with the text, up to a limit (CSS max-height)
    c.style.height = 'auto';
    c.style.height = c.scrollHeight + 'px';
  }

  // A join refused (a private room) is told next to the join box, where the
  // room was asked for; it stays until the next attempt.
  function showJoinError(text) {
    $('join-error').textContent = text;
    $('room-input').setAttribute('aria-invalid', 'true');
  }

  function clearJoinError() {
    $('join-error').textContent = '';
    $('room-input').removeAttribute('aria-invalid');
  }

  // A toast goes after `ms` (0: it stays until dismissed).
  function toast(text, kind = 'error', ms = 7000) {
    const box = $('errors');
    const t = el('div', 'toast ' + kind);
    t.setAttribute('role', kind === 'error' ? 'alert' : 'status');
    t.append(el('span', 'toast-text', text));
    const x = el('button', 'toast-close', '×');
    x.type = 'button';
    x.setAttribute('aria-label', 'Dismiss');
    x.addEventListener('click', () => t.remove());
    t.append(x);
    box.append(t);
    if (ms > 0) setTimeout(() => t.remove(), ms);
    while (box.children.length > 4) box.firstElementChild.remove();
  }

  // ---------- wiring ----------
  $('name-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const name = $('name-input').value.trim();
    if (cpLen(name) > 32) { toast('Name must be at most 32 characters'); return; }
    if (name.toLowerCase() === 'system') { toast('"system" is a reserved name'); return; }
    if (name === S.name && (S.conn === 'online' || S.conn === 'connecting')) return;
    store('chat.name', name); // empty means "let the server pick a guest name"
    $('name-form').classList.remove('open');
    S.focusAfterJoin = true;
    startSession(name);
  });

  $('rename').addEventListener('click', () => {
    const open = $('name-form').classList.toggle('open');
    renderStatus();
    if (open) { $('name-input').focus(); $('name-input').select(); }
  });
  $('name-input').addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && $('name-form').classList.contains('open')) {
      $('name-form').classList.remove('open');
      $('name-input').value = S.name;
      renderStatus();
      $('rename').focus();
    }
  });

  $('join-form').addEventListener('submit', (e) => {
    e.preventDefault();
    clearJoinError();
    const input = $('room-input');
    const name = input.value.trim().replace(/^#/, '');
    if (!ROOM_RE.test(name)) { toast('Room names: letters, digits, _ . - (max 64, start with letter/digit)'); return; }
    input.value = '';
    joinRoom(name, true);
  });

  $('room-input').addEventListener('input', clearJoinError);

  $('leave').addEventListener('click', leaveCurrent);

  $('members-show-more').addEventListener('click', () => {
    const room = S.rooms.get(S.current);
    if (room && !room.dm) showMoreMembers(room);
  });

  $('load-older').addEventListener('click', () => {
    const room = S.rooms.get(S.current);
    if (!room || room.dm || room.loadingOlder || room.noOlder) return;
    const first = room.items.find((it) => it.seq != null);
    const before = first ? first.seq : room.lastSeq + 1;
    if (before <= 1) { room.noOlder = true; renderAll(); return; }
    room.loadingOlder = true;
    renderAll();
    cmd('history', { room: room.key, before, limit: HISTORY_PAGE })
      .then((r) => {
        const msgs = r.messages || [];
        const list = $('messages');
        const fromBottom = list.scrollHeight - list.scrollTop;
        msgs.forEach((m) => addItem(room, msgItem(m)));
        if (msgs.length < HISTORY_PAGE || (msgs[0] && msgs[0].seq <= 1)) room.noOlder = true;
        room.loadingOlder = false;
        renderAll();
        // keep the reader's place instead of jumping
        if (S.current === room.key) list.scrollTop = list.scrollHeight - fromBottom;
      })
      .catch((e) => { room.loadingOlder = false; toast(`Load older: ${errText(e)}`); renderAll(); });
  });

  const composer = $('composer');
  composer.addEventListener('keydown', (e) => {
    // Enter sends, Shift+Enter is a newline; never interrupt IME composition.
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $('composer-form').requestSubmit();
    }
  });
  composer.addEventListener('input', () => { renderComposer(); maybeSendTyping(); });

  $('composer-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const text = composer.value;
    if (!text.trim()) return;
    const problem = validateText(text);
    if (problem) { toast(problem); composer.focus(); return; }
    composer.value = '';
    sendText(text).catch(() => { /* shown on the message itself */ });
    renderComposer();
    composer.focus();
  });

  // Keep the newest message in view when the viewport shrinks (e.g. a phone keyboard opens).
  let stuckToBottom = true;
  const msgList = $('messages');
  msgList.addEventListener('scroll', () => {
    stuckToBottom = msgList.scrollHeight - msgList.scrollTop - msgList.clientHeight < 80;
  });
  window.addEventListener('resize', () => { if (stuckToBottom) msgList.scrollTop = msgList.scrollHeight; });

  // Back online: no point waiting out the backoff.
  window.addEventListener('online', () => { if (S.conn === 'reconnecting' && S.retryTimer) connect(); });

  setInterval(() => { if (S.conn === 'online') refreshDirectory(); }, DIRECTORY_REFRESH_MS);

  // Small surface for debugging and browser tests.
  window.chat = {
    state: () => ({
      status: S.conn,
      transport: transportName(),
      user: S.me,
      client: S.client,
      node: S.node,
      limits: { ...S.limits },
      current: S.current,
      rooms: Object.fromEntries([...S.rooms.values()].map((r) => [r.key, {
        joined: r.joined, locked: r.locked, epoch: r.epoch, seq: r.lastSeq, unread: r.unread,
        members: [...r.members.keys()],
        count: r.count,
        messages: r.items.filter((it) => it.kind === 'msg').length,
        outbox: r.outbox.map((o) => ({ key: o.key, status: o.status, error: o.error })),
      }])),
    }),
    currentRoom: () => S.current,
    send: (text) => sendText(String(text)),
    join: (room) => joinRoom(String(room), true),
  };

  // ---------- boot ----------
  const params = new URLSearchParams(location.search);
  if (params.get('transport') === 'sse') S.sse = true; // SSE from the start, for the page's life
  if (params.has('token')) store('chat.token', params.get('token'));
  S.token = load('chat.token');
  const savedName = load('chat.name');
  renderAll();
  if (savedName !== null) {
    $('name-input').value = savedName;
    startSession(savedName);
  } else {
    $('name-input').focus();
  }
})();
