"""schemathesis hooks (SCHEMATHESIS_HOOKS=st_hooks): patches travel as application/zip."""
import schemathesis


@schemathesis.serializer("application/zip")
def zip_bytes(ctx, value):
    # Generated values are strings or bytes; the server must answer any of them with a 400.
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8")
