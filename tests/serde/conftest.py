from netspark.serde import BlockOutputStream, Extent


def write_outputs(pool, *payloads: bytes) -> tuple[BlockOutputStream, list[list[Extent]]]:
    out = BlockOutputStream(pool)
    outputs = []
    for payload in payloads:
        out.write(payload)
        outputs.append(out.cut())
    out.close()
    return out, outputs
