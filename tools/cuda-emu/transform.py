"""Turns a .cu file of model/ops/cuda into C++ for the CPU emulation: kernel launches become calls
that run every block's threads as fibers, dynamic shared memory the emulator's buffer."""
import re, sys
src, dst = sys.argv[1], sys.argv[2]
s = open(src).read()
s = '#include <cuda_runtime.h>\n' + s
s = s.replace('extern __shared__ float smem[];', 'float *smem = emu_dynamic_smem;')
s = re.sub(r'extern __shared__ __align__\(\w+\) unsigned char smem\[\];', 'unsigned char *smem = (unsigned char *)emu_dynamic_smem;', s)
s = re.sub(r'([A-Za-z_]\w*(?:<[^<>()]*>)?)\s*<<<(.+?)>>>\s*\(', lambda m: 'emu_configure(%s), EMU_RUN(%s)(' % (m.group(2), m.group(1)), s, flags=re.S)
open(dst, 'w').write(s)
