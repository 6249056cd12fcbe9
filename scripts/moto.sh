# Sourced: start_moto / stop_moto for scripts that need the local emulator.
# moto listens on a free 127.0.0.1 port and is stopped by its own PID.

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

start_moto() {
    MOTO_PORT=$(free_port)
    MOTO_LOG="$AMIFLOW_CACHE/moto-$MOTO_PORT.log"
    # moto's recorder writes into its working directory unless told where: keep it in .cache/.
    MOTO_RECORDER_FILEPATH="$AMIFLOW_CACHE/moto-$MOTO_PORT.recording" \
        "$AMIFLOW_MOTO_SERVER" -H 127.0.0.1 -p "$MOTO_PORT" >"$MOTO_LOG" 2>&1 &
    MOTO_PID=$!
    for _ in $(seq 1 100); do
        if curl -sf "http://127.0.0.1:$MOTO_PORT/moto-api/" >/dev/null 2>&1; then break; fi
        if ! kill -0 "$MOTO_PID" 2>/dev/null; then echo "moto failed to start; see $MOTO_LOG" >&2; return 1; fi
        sleep 0.1
    done
    # Every SDK client goes to the emulator; fake static credentials so nothing probes IMDS.
    export AWS_ENDPOINT_URL="http://127.0.0.1:$MOTO_PORT"
    export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_SESSION_TOKEN=testing
    export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
    export AWS_EC2_METADATA_DISABLED=true
}

stop_moto() {
    [ -n "${MOTO_PID:-}" ] && kill "$MOTO_PID" 2>/dev/null && wait "$MOTO_PID" 2>/dev/null
    MOTO_PID=
}
