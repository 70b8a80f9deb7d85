package agent

import "syscall"

// diskUsage is statfs of each path that is a mount point of its own (or
// the root), as df counts: used = (blocks - free) * fragment size.
func diskUsage(paths []string) []DiskUsage {
	var out []DiskUsage
	var rootDev uint64
	for i, p := range paths {
		var st syscall.Stat_t
		if err := syscall.Stat(p, &st); err != nil {
			continue
		}
		if i == 0 {
			rootDev = st.Dev
		} else if st.Dev == rootDev {
			continue // not a filesystem of its own
		}
		var fs syscall.Statfs_t
		if err := syscall.Statfs(p, &fs); err != nil {
			continue
		}
		size := int64(fs.Frsize)
		out = append(out, DiskUsage{Path: p, UsedBytes: int64(fs.Blocks-fs.Bfree) * size, TotalBytes: int64(fs.Blocks) * size})
	}
	return out
}
