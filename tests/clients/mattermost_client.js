// The official JavaScript client, @mattermost/client, against the emulator.
// Usage: node mattermost_client.js <emulator url> <bot token> <poster's username>
// Run from a directory where @mattermost/client and ws are installed. Prints one JSON line.
'use strict';

const WS = require('ws');
// Node 20 has no global WebSocket/CloseEvent; the client refers to both.
globalThis.WebSocket ??= WS;
globalThis.CloseEvent ??= class CloseEvent {
    constructor(type, init) {
        this.type = type;
        Object.assign(this, init);
    }
};
const {Client4, WebSocketClient} = require('@mattermost/client');

// The client logs with console.log: keep stdout for the result line.
console.log = (...args) => process.stderr.write(args.join(' ') + '\n');

const [url, token, poster] = process.argv.slice(2);
const deadline = setTimeout(() => fail('timed out'), 30000);

function fail(why) {
    process.stdout.write(JSON.stringify({ok: false, error: String(why)}) + '\n');
    process.exit(1);
}

function waitFor(events, predicate) {
    return new Promise((resolve) => {
        const check = () => {
            const found = events.find(predicate);
            if (found) {
                resolve(found);
            } else {
                setTimeout(check, 10);
            }
        };
        check();
    });
}

async function control(path, body) {
    const resp = await fetch(url + path, {method: 'POST', body: JSON.stringify(body || {})});
    if (!resp.ok) {
        throw new Error(`${path}: ${resp.status} ${await resp.text()}`);
    }
    return resp.json();
}

async function main() {
    const client = new Client4();
    client.setUrl(url);
    client.setToken(token);
    const me = await client.getMe();
    const teams = await client.getMyTeams();
    const channel = await client.getChannelByNameAndTeamName(teams[0].name, 'town-square');

    const events = [];
    let missed = 0;
    let reconnected = 0;
    const socket = new WebSocketClient({
        newWebSocketFn: (wsUrl) => new WS(wsUrl, {headers: {Authorization: `Bearer ${token}`}}),
        minWebSocketRetryTime: 50,
        reconnectJitterRange: 10,
        clientPingInterval: 60000,
    });
    socket.addMessageListener((msg) => events.push(msg));
    socket.addMissedMessageListener(() => missed++);
    socket.addReconnectListener(() => reconnected++);
    socket.initialize(url.replace(/^http/, 'ws') + '/api/v4/websocket', token);
    const hello = await waitFor(events, (m) => m.event === 'hello');

    const before = Date.now() - 1;
    const created = await client.createPost({channel_id: channel.id, message: 'from @mattermost/client'});
    const posted = await waitFor(events, (m) => m.event === 'posted' && JSON.parse(m.data.post).id === created.id);
    const since = await client.getPostsSince(channel.id, before);
    const second = await client.createPost({channel_id: channel.id, message: 'second'});
    const older = await client.getPostsBefore(channel.id, second.id, 0, 10);

    // Drop the socket; post while it is away; the client resumes and gets it, no new hello.
    await control('/_emulator/drop');
    await control('/_emulator/posts', {username: poster, channel_id: channel.id, message: 'while away'});
    const away = await waitFor(events, (m) => m.event === 'posted' && JSON.parse(m.data.post).message === 'while away');
    const hellos = events.filter((m) => m.event === 'hello').length;
    socket.close();

    clearTimeout(deadline);
    process.stdout.write(JSON.stringify({
        ok: true,
        me: me.id,
        teams: teams.map((t) => t.name),
        channel: channel.id,
        created: created.id,
        hello_connection_id: hello.data.connection_id,
        hello_seq: hello.seq,
        posted_seq: posted.seq,
        since_order: since.order,
        before_order: older.order,
        before_next: older.next_post_id,
        away_seq: away.seq,
        hellos,
        missed,
        reconnected,
    }) + '\n');
    process.exit(0);
}

main().catch(fail);
