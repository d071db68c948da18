pub fn openapi() {}
