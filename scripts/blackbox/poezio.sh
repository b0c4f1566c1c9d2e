#!/usr/bin/env bash
# Black-box test: poezio (Debian's package, built on its slixmpp 1.8.3) logs in as
# alice over STARTTLS under tmux, sends bob a message by typing a command, as a user
# would, and shows bob's answer. bob is a slixmpp client from the venv.
# poezio refuses to run as root, so it runs as an unprivileged user made for it.
# Usage: poezio.sh HOST STARTTLS_PORT CA_FILE STARLING_BIN STARLING_CONFIG
set -euo pipefail
host=$1 port=$2 ca=$3
root="$(cd "$(dirname "$0")/../.." && pwd)"
user=starling-poezio
if ! id "$user" >/dev/null 2>&1; then
  useradd --system --create-home --shell /bin/sh "$user"
fi
home="$(getent passwd "$user" | cut -d: -f6)"
work="$(mktemp -d)"
chmod 755 "$work"
session="poezio-$$"
cleanup() {
  runuser -u "$user" -- tmux kill-session -t "$session" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
cp "$ca" "$work/ca.pem"
cat > "$work/poezio.cfg" <<CFG
[Poezio]
jid = alice@localhost
password = secret
custom_host = $host
custom_port = $port
ca_cert_path = $work/ca.pem
force_encryption = true
use_bookmarks_method = false
CFG
chown -R "$user" "$work"
rm -rf "$home/.local/share/poezio" "$home/.config/poezio"

runuser -u "$user" -- env HOME="$home" TERM=xterm-256color \
  tmux new-session -d -s "$session" -x 160 -y 50 "poezio -f $work/poezio.cfg"
screen() { runuser -u "$user" -- tmux capture-pane -p -t "$session" 2>/dev/null || true; }

# Wait until poezio shows it is connected (its roster tab, or the info buffer).
for _ in $(seq 1 100); do
  if screen | grep -qi "connected\|authenticated\|roster"; then break; fi
  sleep 0.2
done

sleep 1
# alice types a message to bob, as a user would; bob answers; poezio must show the
# answer. (alice speaks first: poezio 0.14 fetches a tab's history from the archive
# when the tab opens, with an `end` rounded down to the second, and drops a message
# that opened the tab while that fetch runs.)
"$root/target/pyvenv/bin/python" "$root/scripts/blackbox/poezio_peer.py" "$host" "$port" "$ca" \
  --expect "hello bob from poezio" --reply "hello poezio from bob" > "$work/peer.log" 2>&1 &
peer=$!
sleep 2
# In the roster tab "/" opens the command line; the rest is typed into it.
runuser -u "$user" -- tmux send-keys -t "$session" -l "/"
sleep 0.3
runuser -u "$user" -- tmux send-keys -t "$session" -l "message bob@localhost hello bob from poezio"
sleep 0.5
runuser -u "$user" -- tmux send-keys -t "$session" C-m
for _ in $(seq 1 100); do
  if screen | grep -q "hello poezio from bob"; then break; fi
  sleep 0.2
done
if ! wait "$peer"; then
  echo "FAILED: bob did not get poezio's message"; screen; cat "$work/peer.log"; exit 1
fi
if ! screen | grep -q "hello poezio from bob"; then
  echo "FAILED: poezio did not show bob's answer"; screen; exit 1
fi
echo "black-box poezio: OK"
