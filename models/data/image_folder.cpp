// A folder of PNG / JPEG / BMP images: each decoded, centre-cropped to a square on its short side
// and resized to the target size (core/image_io.h), optionally labelled by sub-folder.
#include <algorithm>
#include <cctype>
#include <cstring>
#include <filesystem>

#include "core/image_io.h"
#include "models/data/dataset.h"
#include "models/data/pixels.h"

namespace diffuse::data {
namespace {

namespace fs = std::filesystem;

bool is_image_name(const fs::path& p) {
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return ext == ".png" || ext == ".jpg" || ext == ".jpeg" || ext == ".bmp";
}

// Image files under `dir` (recursively or not), sorted so the dataset order is the same on every
// filesystem.
std::vector<std::string> list_images(const std::string& dir, bool recursive) {
  std::vector<std::string> out;
  std::error_code ec;
  auto visit = [&](const fs::directory_entry& e) {
    std::error_code fec;
    if (e.is_regular_file(fec) && is_image_name(e.path())) out.push_back(e.path().string());
  };
  if (recursive) {
    fs::recursive_directory_iterator it(dir, fs::directory_options::follow_directory_symlink, ec), end;
    for (; !ec && it != end; it.increment(ec)) visit(*it);
  } else {
    fs::directory_iterator it(dir, ec), end;
    for (; !ec && it != end; it.increment(ec)) visit(*it);
  }
  if (ec) DF_FAIL("cannot list image folder '", dir, "': ", ec.message());
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

Dataset load_image_folder(const std::string& dir, const ImageFolderOptions& opt) {
  DF_CHECK(opt.channels == 1 || opt.channels == 3, "image folder '", dir, "': channels must be 1 or 3, got ",
           opt.channels);
  DF_CHECK(opt.size > 0 && opt.size <= 4096, "image folder '", dir, "': size must be 1..4096, got ", opt.size);
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) DF_FAIL("image folder '", dir, "' is not a directory");

  std::vector<std::string> files;
  std::vector<int64_t> labels;
  int num_classes = 0;
  std::vector<std::string> class_names;
  if (opt.class_labels) {
    std::vector<std::string> classes;
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
      std::error_code dec;
      if (it->is_directory(dec)) classes.push_back(it->path().filename().string());
      else if (is_image_name(it->path()))
        DF_FAIL("image folder '", dir, "' is labelled by sub-folder, but '", it->path().string(),
                "' is not inside a class sub-folder");
    }
    if (ec) DF_FAIL("cannot list image folder '", dir, "': ", ec.message());
    std::sort(classes.begin(), classes.end());
    for (size_t c = 0; c < classes.size(); ++c)
      for (std::string& f : list_images(dir + "/" + classes[c], true)) {
        files.push_back(std::move(f));
        labels.push_back(static_cast<int64_t>(c));
      }
    num_classes = static_cast<int>(classes.size());
    class_names = classes;
  } else {
    files = list_images(dir, true);
  }
  if (files.empty())
    DF_FAIL("image folder '", dir, "' holds no images (looking for .png, .jpg, .jpeg, .bmp",
            opt.class_labels ? " inside class sub-folders)" : ")");

  const int64_t N = static_cast<int64_t>(files.size()), S = opt.size, C = opt.channels;
  Dataset d;
  d.images = Tensor::empty({N, S, S, C});
  float* out = d.images.data<float>();
  for (int64_t i = 0; i < N; ++i) {
    Image8 img = center_crop_resize(read_image_u8(files[i], opt.channels), opt.size);
    detail::pixels_to_floats(img.pixels.data(), out + i * S * S * C, img.pixels.size());
  }
  if (opt.class_labels) {
    d.labels = Tensor::from_vector_i64(labels, {N});
    d.num_classes = num_classes;
    d.class_names = std::move(class_names);
  }
  d.name = dir;
  return d;
}

}  // namespace diffuse::data
