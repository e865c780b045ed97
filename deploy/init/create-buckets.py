"""Create the stack's buckets in the S3-compatible store if they are missing (service s3-init).

Buckets: $CLV_S3_BUCKETS (space-separated). Endpoint and credentials: the standard AWS
variables (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), read by pyarrow,
the library the CLV store writes with. Idempotent; retries while the store starts.
"""

import os
import sys
import time

import pyarrow.fs as pafs


def main() -> int:
    buckets = os.environ.get("CLV_S3_BUCKETS", "").split()
    # FileSystem.from_uri (the store's way) reads AWS_ENDPOINT_URL; this constructor does not.
    s3 = pafs.S3FileSystem(endpoint_override=os.environ.get("AWS_ENDPOINT_URL") or None,
                           allow_bucket_creation=True)
    for attempt in range(1, 31):
        try:
            for bucket in buckets:
                if s3.get_file_info(bucket).type == pafs.FileType.NotFound:
                    s3.create_dir(bucket)
                    print(f"created bucket {bucket}")
                else:
                    print(f"bucket {bucket} exists")
            return 0
        except OSError as exc:
            print(f"store not ready ({exc}); retry {attempt}/30", file=sys.stderr)
            time.sleep(2)
    return 1


if __name__ == "__main__":
    sys.exit(main())
