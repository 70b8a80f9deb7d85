package treecopy

import (
	"bufio"
	"fmt"
	"io"
)

// GuestMain is banger-agent's cp mode, the guest end of 'vm cp', run over
// SSH as the guest's root:
//
//	banger-agent cp pack PATH     # PATH as a tar stream on stdout
//	banger-agent cp unpack PATH   # the tar stream on stdin, extracted at PATH
//
// A relative PATH is relative to the working directory (root's home over
// SSH). It returns 0, 1 on a failed copy (one "banger-agent: cp: …" line on
// stderr), or 2 on bad arguments.
func GuestMain(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) != 2 || args[0] != "pack" && args[0] != "unpack" {
		fmt.Fprintln(stderr, "banger-agent: cp: usage: banger-agent cp pack|unpack PATH")
		return 2
	}
	var err error
	if args[0] == "pack" {
		bw := bufio.NewWriterSize(stdout, 256<<10)
		if _, err = Pack(bw, args[1], nil); err == nil {
			err = bw.Flush()
		}
	} else {
		_, err = Unpack(bufio.NewReaderSize(stdin, 256<<10), args[1], Options{KeepSetID: true})
		if err == nil {
			_, err = io.Copy(io.Discard, stdin) // the stream's end padding
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "banger-agent: cp: %v\n", err)
		return 1
	}
	return 0
}
