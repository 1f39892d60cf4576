// core/stb_impl.cpp: the one definition of stb_image and stb_image_write in the library, in a file
// of its own so that the build can treat stb's code apart from ours (cmake/DiffuseTargets.cmake).
// Decoders limited to the formats we read (less code facing untrusted files), and a dimension cap
// so a header that claims 10^9 x 10^9 pixels fails instead of allocating; core/image_io.cpp
// includes the headers with the same settings and checks what stb would trust before calling it.
//
// In sanitizer and fuzz builds this file is compiled with AddressSanitizer but without UBSan:
// stb_image 2.27 (Debian's libstb-dev) has arithmetic undefined behaviour on hostile JPEGs that
// upstream fixed in 2.28, and fuzz_images found two kinds of it: the bit reader's count goes
// negative on a scan cut short by a marker and it then shifts by >= 32
// (stbi__grow_buffer_unsafe; the input is tests/corpus/images/bad_jpeg_shift_exponent.jpg), and
// the dequantisation multiplies a decoded coefficient by the table entry in int and overflows
// (stbi__jpeg_decode_block). Both make wrong numbers out of a broken file, not wrong memory
// accesses; ASan still checks every access of stb's code, and our code around it keeps UBSan.
//
// stb's allocations are zeroed. A JPEG whose scan uses a Huffman or quantisation table that no
// DHT/DQT segment defined makes stb 2.27 decode with that table's uninitialised heap memory
// (found by fuzz_images as a nondeterministic assertion in stbi__jpeg_huff_decode; MemorySanitizer
// confirmed the read of the undefined fast-AC table). Zeroed, an undefined table decodes every
// code as "end of block" and every coefficient as 0: the same pixels on every run, and no index
// computed from garbage. A 3-minute MemorySanitizer run of stb alone with this setting (945k
// executions, docs/reliability.md) found no other uninitialised read.
#include <cstdlib>
#define STBI_MALLOC(size) std::calloc(1, size)
#define STBI_REALLOC(p, size) std::realloc(p, size)
#define STBI_FREE(p) std::free(p)
#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_PNG
#define STBI_ONLY_JPEG
#define STBI_ONLY_BMP
#define STBI_MAX_DIMENSIONS (1 << 15)
#define STBI_FAILURE_USERMSG
#include <stb/stb_image.h>
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb/stb_image_write.h>
