package guestbuild

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// lz4LegacyMagic starts an LZ4 "legacy frame", the format the kernel's
// `lz4 -l` build step produces (CONFIG_KERNEL_LZ4, Debian's choice for 6.1).
const lz4LegacyMagic = 0x184C2102

// lz4LegacyMaxBlock is the largest decompressed size of one legacy block.
const lz4LegacyMaxBlock = 8 << 20

// decompressLZ4Legacy decodes an LZ4 legacy frame: the magic, then blocks of
// (uint32 LE compressed size, LZ4 block), each independent and decompressing
// to at most 8 MiB. A repeated magic (concatenated frames) is skipped. The
// kernel build appends the uncompressed size as a 4-byte trailer; anything
// shorter than a block header, or a size that cannot be a block, ends the
// stream, and a 4-byte trailer, when present, is checked against the output.
func decompressLZ4Legacy(src []byte) ([]byte, error) {
	if len(src) < 4 || binary.LittleEndian.Uint32(src) != lz4LegacyMagic {
		return nil, errors.New("lz4: not a legacy frame")
	}
	out := make([]byte, 0, 4*len(src))
	i := 4
	for len(src)-i >= 4 {
		n := binary.LittleEndian.Uint32(src[i:])
		if n == lz4LegacyMagic {
			i += 4
			continue
		}
		rest := len(src) - i - 4
		if rest == 0 || int64(n) > int64(rest) {
			// Trailer (the kernel's appended uncompressed size) or padding.
			if rest == 0 && int(n) != len(out) {
				return nil, fmt.Errorf("lz4: trailer says %d bytes, decoded %d", n, len(out))
			}
			break
		}
		i += 4
		var err error
		before := len(out)
		out, err = lz4Block(out, src[i:i+int(n)])
		if err != nil {
			return nil, fmt.Errorf("lz4: block at offset %d: %w", i-4, err)
		}
		if len(out)-before > lz4LegacyMaxBlock {
			return nil, fmt.Errorf("lz4: block at offset %d decodes to %d bytes (> 8 MiB)", i-4, len(out)-before)
		}
		i += int(n)
	}
	if len(out) == 0 {
		return nil, errors.New("lz4: empty stream")
	}
	return out, nil
}

// lz4Block appends the decoding of one raw LZ4 block to dst. Matches may only
// refer to data produced by this block (legacy blocks are independent).
func lz4Block(dst, src []byte) ([]byte, error) {
	base := len(dst)
	i := 0
	for {
		if i >= len(src) {
			return nil, errors.New("truncated block")
		}
		token := src[i]
		i++
		lit := int(token >> 4)
		if lit == 15 {
			for {
				if i >= len(src) {
					return nil, errors.New("truncated literal length")
				}
				b := src[i]
				i++
				lit += int(b)
				if b != 255 {
					break
				}
			}
		}
		if lit > len(src)-i {
			return nil, errors.New("literals run past the block")
		}
		dst = append(dst, src[i:i+lit]...)
		i += lit
		if i == len(src) {
			return dst, nil // the last sequence carries literals only
		}
		if len(src)-i < 2 {
			return nil, errors.New("truncated match offset")
		}
		off := int(src[i]) | int(src[i+1])<<8
		i += 2
		if off == 0 || off > len(dst)-base {
			return nil, fmt.Errorf("bad match offset %d", off)
		}
		ml := int(token & 15)
		if ml == 15 {
			for {
				if i >= len(src) {
					return nil, errors.New("truncated match length")
				}
				b := src[i]
				i++
				ml += int(b)
				if b != 255 {
					break
				}
			}
		}
		ml += 4
		start := len(dst) - off
		if off >= ml {
			dst = append(dst, dst[start:start+ml]...)
			continue
		}
		// Overlapping match: the copy repeats the last off bytes.
		for k := 0; k < ml; k++ {
			dst = append(dst, dst[start+k])
		}
	}
}
