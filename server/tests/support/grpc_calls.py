"""gRPC through the tunnel with grpcio (PyPI) on both sides, no protobuf:
generic handlers on raw bytes. server/tests/http2.rs runs

  grpc_calls.py serve             a gRPC server on 127.0.0.1 (h2c); prints its port,
                                  and "endless: cancelled" when a call is cancelled
  grpc_calls.py call ADDR AUTHORITY [CA_PEM]
                                  every kind of call through ADDR (h2c, or TLS with
                                  CA_PEM), printing "ok KIND" for each
"""
import sys
import time

import grpc

BIG = 8 << 20
OPTIONS = [("grpc.max_receive_message_length", BIG), ("grpc.max_send_message_length", BIG)]


def serve():
    from concurrent import futures

    def unary(req, ctx):
        md = dict(ctx.invocation_metadata())
        if req == b"fail":
            ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad input: fail")
        if req == b"slow":
            time.sleep(3)
        ctx.send_initial_metadata((("x-initial", "hello"),))
        ctx.set_trailing_metadata((("x-trailer", "from-server"),))
        return b"echo:" + req[:16] + b":" + md.get("x-client", "").encode() + b":" + str(len(req)).encode()

    def server_stream(req, ctx):
        for i in range(5):
            yield b"part%d" % i

    def client_stream(requests, ctx):
        return b"sum:%d" % sum(len(r) for r in requests)

    def bidi(requests, ctx):
        for r in requests:
            yield b"re:" + r

    def endless(req, ctx):
        while ctx.is_active():
            yield b"tick"
            time.sleep(0.05)
        print("endless: cancelled", flush=True)

    handler = grpc.method_handlers_generic_handler(
        "t.S",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
            "Endless": grpc.unary_stream_rpc_method_handler(endless),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


def call(addr, authority, ca=None):
    options = OPTIONS + [("grpc.default_authority", authority)]
    if ca:
        creds = grpc.ssl_channel_credentials(root_certificates=open(ca, "rb").read())
        options.append(("grpc.ssl_target_name_override", authority.split(":")[0]))
        channel = grpc.secure_channel(addr, creds, options=options)
    else:
        channel = grpc.insecure_channel(addr, options=options)
    grpc.channel_ready_future(channel).result(timeout=20)

    unary = channel.unary_unary("/t.S/Unary")
    resp, c = unary.with_call(b"hi", metadata=(("x-client", "meta"),), timeout=20)
    assert resp == b"echo:hi:meta:2", resp
    assert ("x-initial", "hello") in c.initial_metadata(), c.initial_metadata()
    assert ("x-trailer", "from-server") in c.trailing_metadata(), c.trailing_metadata()
    assert c.code() == grpc.StatusCode.OK
    print("ok unary and metadata both ways", flush=True)

    got = list(channel.unary_stream("/t.S/ServerStream")(b"x", timeout=20))
    assert got == [b"part%d" % i for i in range(5)], got
    print("ok server streaming", flush=True)

    got = channel.stream_unary("/t.S/ClientStream")(iter([b"a" * 10, b"b" * 20, b"c" * 30]), timeout=20)
    assert got == b"sum:60", got
    print("ok client streaming", flush=True)

    got = list(channel.stream_stream("/t.S/Bidi")(iter([b"1", b"2", b"3"]), timeout=20))
    assert got == [b"re:1", b"re:2", b"re:3"], got
    print("ok bidirectional", flush=True)

    try:
        unary(b"fail", timeout=20)
        raise AssertionError("no error")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.code()
        assert e.details() == "bad input: fail", e.details()
    print("ok error status with details", flush=True)

    try:
        unary(b"slow", timeout=0.5)
        raise AssertionError("no deadline")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e.code()
    print("ok deadline exceeded", flush=True)

    big = bytes(range(256)) * (4 << 12)
    resp = unary(big, timeout=60)
    assert resp.endswith(b":%d" % len(big)), resp[-32:]
    print("ok 4 MiB message", flush=True)

    stream = channel.unary_stream("/t.S/Endless")(b"x", timeout=60)
    for _ in range(3):
        assert next(stream) == b"tick"
    stream.cancel()
    print("ok cancelled a streaming call", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve()
    else:
        call(*sys.argv[2:])
